"""The collection index in the shared store: `index_paths` adds or replaces the chunks of
changed files (a file whose sha256 is unchanged is skipped; `prune` drops vanished files), and
`search` ranks chunks by BM25 over content morphemes, so 규칙 finds 규칙은 and 규칙이."""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kollm.rag.chunk import DEFAULT_CHUNK_CHARS, chunk_text
from kollm.rag.ingest import SUFFIXES, IngestError, Section, read_document
from kollm.rag.limits import Limits
from kollm.rag.qdrant import payload as qdrant_payload
from kollm.store import connect, open_store
from kollm.text.morphemes import content_morphemes
from kollm.text.normalize import hangul_ratio, normalize_text
from kollm.text.pii import mask_pii


@dataclass
class Hit:
    doc_id: str
    chunk_id: int
    source: str
    page: int | None
    start: int
    end: int
    score: float
    text: str
    # where a reader finds it in an HWP or HWPX file: its section and paragraph number
    section: int | None = None
    paragraph: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """Its fields, where-it-is first, then the span, the score and the text."""
        out = asdict(self)
        order = ("doc_id", "chunk_id", "source", "page", "section", "paragraph")
        return {**{k: out[k] for k in order}, **out}

    @property
    def place(self) -> str:
        return place(self.page, self.section, self.paragraph)


def place(page: int | None, section: int | None = None, paragraph: int | None = None) -> str:
    """Where a chunk is, as a reader would look for it: "section 2, paragraph 14, p. 3"."""
    parts = [f"section {section}"] if section else []
    parts += [f"paragraph {paragraph}"] if paragraph else []
    parts += [f"p. {page}"] if page else []
    return ", ".join(parts)


@dataclass
class IndexReport:
    collection: str
    files: int = 0
    indexed: int = 0
    unchanged: int = 0
    removed: int = 0
    chunks: int = 0
    characters: int = 0
    embedded: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    # files read, with something worth knowing about them: a distribution HWP document, a
    # PDF's pages with no text layer (left out)
    notes: list[dict[str, str]] = field(default_factory=list)
    # chunks by language (Korean when at least 30% of its letters are Hangul) and by length
    languages: dict[str, int] = field(default_factory=dict)
    lengths: list[int] = field(default_factory=list, repr=False)

    def count(self, rows: list[dict]) -> None:
        for row in rows:
            language = "ko" if hangul_ratio(row["text"]) >= 0.3 else "other"
            self.languages[language] = self.languages.get(language, 0) + 1
            self.lengths.append(len(row["text"]))
        self.chunks += len(rows)
        self.characters += sum(len(r["text"]) for r in rows)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        lengths = sorted(out.pop("lengths"))
        out["chunk_chars"] = (
            {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1]}
            if lengths
            else {}
        )
        return out


def _files(paths: list[Path]) -> list[tuple[Path, Path]]:
    """(file, root) of every supported file under `paths`; a file's root is its directory."""
    found = []
    for path in paths:
        if path.is_dir():
            found += [(f, path) for f in sorted(path.rglob("*")) if f.suffix.lower() in SUFFIXES]
        else:
            found.append((path, path.parent))
    return found


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class RagIndex:
    """Documents and chunks in the shared SQLite store, searched there; with `qdrant`
    (rag.qdrant.QdrantBackend) the chunks are mirrored into Qdrant and searched there."""

    def __init__(self, home: Path | str | None = None, qdrant: Any = None) -> None:
        self.home, self.path = open_store(home)
        self.qdrant = qdrant
        self._matrix_cache: dict[tuple[str, str], tuple] = {}

    def index_paths(
        self,
        collection: str,
        paths: list[Path],
        mask: bool = False,
        prune: bool = False,
        max_chars: int = DEFAULT_CHUNK_CHARS,
        advance: Callable[[int], None] | None = None,
        encoder: Any = None,
        passage_prefix: str = "",
        limits: Limits | None = None,
    ) -> IndexReport:
        """Index the supported files under `paths` into `collection`; with an `encoder`
        (rag.embed.Encoder), every chunk of the collection also gets its vector. A file that
        cannot be read, or would inflate past `limits` [the recipe defaults], is named with
        its reason in the report's failures, and the others are indexed."""
        report = IndexReport(collection)
        limits = limits or Limits.from_config()
        if self.qdrant is not None:  # dense vectors are sized when the collection is made
            self.qdrant.ensure(collection, encoder.dimension if encoder is not None else None)
        seen = set()
        for file, root in _files(paths):
            report.files += 1
            source = file.resolve().relative_to(root.resolve()).as_posix()
            seen.add(source)
            self._index_file(collection, file, source, mask, max_chars, report, limits)
            if advance is not None:
                advance(1)
        if prune:
            report.removed = self._prune(collection, seen)
        if encoder is not None:
            report.embedded = self.embed_missing(collection, encoder, passage_prefix)
        return report

    def embed_missing(self, collection: str, encoder, prefix: str = "") -> int:
        """Vectors for the chunks of `collection` that have none from `encoder`."""
        with closing(connect(self.path)) as conn:
            rows = conn.execute(
                "SELECT c.id, c.text, c.meta FROM rag_chunks c LEFT JOIN rag_vectors v"
                " ON v.chunk_id = c.id AND v.encoder = ? WHERE c.collection = ?"
                " AND v.chunk_id IS NULL ORDER BY c.id",
                (encoder.name, collection),
            ).fetchall()
        for i in range(0, len(rows), 256):
            part = rows[i : i + 256]
            vectors = encoder.encode([prefix + _with_title(r["text"], r["meta"]) for r in part])
            if self.qdrant is not None:
                self.qdrant.ensure(collection, vectors.shape[1])
                self.qdrant.set_vectors(collection, [r["id"] for r in part], vectors)
            with closing(connect(self.path)) as conn, conn:
                conn.executemany(
                    "INSERT OR REPLACE INTO rag_vectors VALUES (?, ?, ?)",
                    [
                        (r["id"], encoder.name, v.tobytes())
                        for r, v in zip(part, vectors, strict=True)
                    ],
                )
        return len(rows)

    def _index_file(
        self, collection, file: Path, source: str, mask, max_chars, report, limits: Limits
    ) -> None:
        if not file.exists():
            report.failures.append({"path": str(file), "reason": "no such file"})
            return
        sha = hashlib.sha256(file.read_bytes()).hexdigest()
        if self._sha(collection, source) == sha:
            report.unchanged += 1
            return
        try:
            sections = read_document(file, source, limits)
        except IngestError as err:
            report.failures.append({"path": str(file), "reason": str(err)})
            return
        said = [s.note for s in sections if s.note] + list(getattr(sections, "notes", []))
        for note in dict.fromkeys(said):
            report.notes.append({"path": str(file), "note": note})
        rows = list(_chunk_rows(sections, mask, max_chars))
        self._replace(collection, source, sha, rows)
        report.indexed += 1
        report.count(rows)

    def _sha(self, collection: str, source: str) -> str | None:
        with closing(connect(self.path)) as conn:
            row = conn.execute(
                "SELECT sha256 FROM rag_documents WHERE collection = ? AND path = ?",
                (collection, source),
            ).fetchone()
        return row[0] if row else None

    def _replace(self, collection: str, source: str, sha: str, rows: list[dict]) -> None:
        """The file's old chunks out and its new ones in, in one transaction (Qdrant is
        written before the commit: if it fails, the file stays unindexed and is retried)."""
        conn = connect(self.path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            _delete(conn, collection, source)
            added: Counter[str] = Counter()
            points = []
            for ordinal, row in enumerate(rows):
                # the document's title is indexed with every chunk, so a chunk from page 3
                # is still found by the name of what the document is about
                heading = "" if row["text"].startswith(row["title"]) else row["title"]
                terms = content_morphemes(f"{heading}\n{row['text']}")
                cur = conn.execute(
                    "INSERT INTO rag_chunks (collection, path, doc_id, ord, page, start, end,"
                    " text, meta, terms) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        collection,
                        source,
                        row["doc_id"],
                        ordinal,
                        row["page"],
                        row["start"],
                        row["end"],
                        row["text"],
                        json.dumps({**row["meta"], "title": row["title"]}, ensure_ascii=False),
                        len(terms),
                    ),
                )
                conn.execute(
                    "INSERT INTO rag_terms (rowid, terms) VALUES (?, ?)",
                    (cur.lastrowid, " ".join(terms)),
                )
                added.update(set(terms))
                points.append((cur.lastrowid, qdrant_payload(row, source, ordinal), terms))
            _add_df(conn, collection, added, 1)
            if self.qdrant is not None:
                self.qdrant.replace(collection, source, points)
            conn.execute(
                "INSERT INTO rag_documents VALUES (?,?,?,?,?)",
                (collection, source, sha, _now(), len(rows)),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def _prune(self, collection: str, keep: set[str]) -> int:
        conn = connect(self.path)
        try:
            gone = [
                r[0]
                for r in conn.execute(
                    "SELECT path FROM rag_documents WHERE collection = ?", (collection,)
                )
                if r[0] not in keep
            ]
            conn.execute("BEGIN IMMEDIATE")
            for source in gone:
                _delete(conn, collection, source)
                if self.qdrant is not None:
                    self.qdrant.delete_source(collection, source)
            conn.execute("COMMIT")
        finally:
            conn.close()
        return len(gone)

    def search(
        self, collection: str, query: str, top_k: int = 5, min_score: float = 0.0
    ) -> list[Hit]:
        """The best `top_k` chunks for `query` scoring at least `min_score`: BM25 (k1 1.2,
        b 0.75, Lucene's IDF, which stays positive in a small collection) over content
        morphemes; FTS5 finds the candidates."""
        terms = sorted(set(content_morphemes(query)))
        if not terms:
            return []
        if self.qdrant is not None:
            found = self.qdrant.keyword(collection, terms, top_k)
            return [_hit(row, score) for score, row in found if score >= min_score]
        with closing(connect(self.path)) as conn:
            rows = conn.execute(
                "SELECT c.*, t.terms AS words FROM rag_terms t JOIN rag_chunks c ON c.id = t.rowid"
                " WHERE rag_terms MATCH ? AND c.collection = ? ORDER BY bm25(rag_terms) LIMIT ?",
                (_match(terms), collection, CANDIDATES),
            ).fetchall()
            stats = _collection_stats(conn, collection, terms)
        scored = sorted(
            ((_bm25(r["words"].split(), r["terms"], terms, stats), r) for r in rows),
            key=lambda pair: (-pair[0], pair[1]["id"]),
        )[:top_k]
        return [_hit(r, score) for score, r in scored if score >= min_score]

    def dense_search(
        self, collection: str, vector, encoder: str, top_k: int = 5, min_similarity: float = -1.0
    ) -> list[Hit]:
        """The `top_k` chunks whose vector from `encoder` is nearest `vector` (cosine)."""
        import numpy as np

        if self.qdrant is not None:
            found = self.qdrant.dense(collection, vector, top_k)
            return [_hit(row, score) for score, row in found if score >= min_similarity]
        ids, matrix = self._vectors(collection, encoder)
        if not len(ids):
            return []
        sims = matrix @ np.asarray(vector, dtype=np.float32)
        best = np.argsort(-sims, kind="stable")[:top_k]
        best = [i for i in best if sims[i] >= min_similarity]
        rows = self.chunks([int(ids[i]) for i in best])
        return [_hit(rows[int(ids[i])], float(sims[i])) for i in best]

    def _vectors(self, collection: str, encoder: str):
        """(chunk ids, matrix) of a collection's vectors, cached until the collection changes."""
        import numpy as np

        with closing(connect(self.path)) as conn:
            key = conn.execute(
                "SELECT COUNT(*), COALESCE(MAX(chunk_id), 0) FROM rag_vectors v JOIN rag_chunks c"
                " ON c.id = v.chunk_id WHERE c.collection = ? AND v.encoder = ?",
                (collection, encoder),
            ).fetchone()
            cached = self._matrix_cache.get((collection, encoder))
            if cached is not None and cached[0] == tuple(key):
                return cached[1], cached[2]
            rows = conn.execute(
                "SELECT v.chunk_id, v.vector FROM rag_vectors v JOIN rag_chunks c"
                " ON c.id = v.chunk_id WHERE c.collection = ? AND v.encoder = ?"
                " ORDER BY v.chunk_id",
                (collection, encoder),
            ).fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        matrix = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows]) if rows else None
        self._matrix_cache[(collection, encoder)] = (tuple(key), ids, matrix)
        return ids, matrix

    def chunks(self, ids: list[int]) -> dict[int, Any]:
        """The chunk rows of `ids`."""
        if not ids:
            return {}
        with closing(connect(self.path)) as conn:
            marks = ",".join("?" * len(ids))
            rows = conn.execute(f"SELECT * FROM rag_chunks WHERE id IN ({marks})", ids).fetchall()
        return {r["id"]: r for r in rows}

    def collection_chunks(self, collection: str) -> list[dict[str, Any]]:
        """Every chunk of `collection` in index order: its id, document and text."""
        with closing(connect(self.path)) as conn:
            rows = conn.execute(
                "SELECT id, doc_id, text FROM rag_chunks WHERE collection = ? ORDER BY id",
                (collection,),
            ).fetchall()
        return [dict(r) for r in rows]

    def write_report(self, report: IndexReport) -> tuple[Path, Path]:
        """The index report as JSON and as an HTML table, under KOLLM_HOME/rag/<collection>/."""
        import html

        from kollm.data.io import write_json, write_text

        out = self.home / "rag" / report.collection
        write_json(out / "index_report.json", report.as_dict())
        rows = "".join(
            f"<tr><td>{html.escape(f['path'])}</td><td>{html.escape(f['reason'])}</td></tr>"
            for f in report.failures
        )
        notes = "".join(
            f"<tr><td>{html.escape(n['path'])}</td><td>{html.escape(n['note'])}</td></tr>"
            for n in report.notes
        )
        counts = "".join(
            f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in report.as_dict().items()
            if k not in ("failures", "notes")
        )
        page = (
            f"<!doctype html><meta charset='utf-8'><title>{html.escape(report.collection)}</title>"
            f"<h1>Index report: {html.escape(report.collection)}</h1><table>{counts}</table>"
            f"<h2>Failures</h2><table><tr><th>file</th><th>reason</th></tr>{rows}</table>"
            f"<h2>Notes</h2><table><tr><th>file</th><th>note</th></tr>{notes}</table>"
        )
        write_text(out / "index_report.html", page)
        return out / "index_report.json", out / "index_report.html"

    def collections(self) -> dict[str, int]:
        """Each collection with its number of chunks."""
        if self.qdrant is not None:
            return self.qdrant.collections()
        with closing(connect(self.path)) as conn:
            rows = conn.execute(
                "SELECT collection, COUNT(*) FROM rag_chunks GROUP BY collection"
            ).fetchall()
        return {r[0]: r[1] for r in rows}


CANDIDATES = 2000  # chunks FTS5 hands over for BM25 scoring


def _hit(row, score: float) -> Hit:
    meta = json.loads(row["meta"] or "{}")
    return Hit(
        row["doc_id"],
        row["id"],
        row["path"],
        row["page"],
        row["start"],
        row["end"],
        round(score, 4),
        row["text"],
        meta.get("section"),
        meta.get("paragraph"),
    )


def _with_title(text: str, meta: str) -> str:
    """A chunk as the encoder sees it: its document's title first (as in the keyword index)."""
    title = json.loads(meta or "{}").get("title") or ""
    return text if not title or text.startswith(title) else f"{title}\n{text}"


K1, B = 1.2, 0.75


def _match(terms: list[str]) -> str:
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


def _add_df(conn, collection: str, counts: Counter, sign: int) -> None:
    conn.executemany(
        "INSERT INTO rag_df VALUES (?, ?, ?) ON CONFLICT (collection, term)"
        " DO UPDATE SET df = df + excluded.df",
        [(collection, term, sign * n) for term, n in counts.items()],
    )
    if sign < 0:
        conn.execute("DELETE FROM rag_df WHERE collection = ? AND df <= 0", (collection,))


def _ensure_df(conn, collection: str) -> None:
    """Document frequencies for a collection indexed before migration 011."""
    if conn.execute("SELECT 1 FROM rag_df WHERE collection = ? LIMIT 1", (collection,)).fetchone():
        return
    counts: Counter[str] = Counter()
    for (words,) in conn.execute(
        "SELECT t.terms FROM rag_terms t JOIN rag_chunks c ON c.id = t.rowid"
        " WHERE c.collection = ?",
        (collection,),
    ):
        counts.update(set(words.split()))
    with conn:
        _add_df(conn, collection, counts, 1)


def _collection_stats(conn, collection: str, terms: list[str]) -> dict[str, Any]:
    """Chunks, mean length in terms, and each term's document frequency in `collection`."""
    n, total = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(terms), 0) FROM rag_chunks WHERE collection = ?",
        (collection,),
    ).fetchone()
    _ensure_df(conn, collection)
    marks = ",".join("?" * len(terms))
    df = dict(
        conn.execute(
            f"SELECT term, df FROM rag_df WHERE collection = ? AND term IN ({marks})",
            (collection, *terms),
        ).fetchall()
    )
    return {"n": n, "avgdl": (total / n) if n else 1.0, "df": {t: df.get(t, 0) for t in terms}}


def _bm25(words: list[str], length: int, terms: list[str], stats: dict[str, Any]) -> float:
    score = 0.0
    norm = K1 * (1 - B + B * length / (stats["avgdl"] or 1.0))
    for term in terms:
        tf = words.count(term)
        if not tf:
            continue
        df = stats["df"][term]
        idf = math.log(1 + (stats["n"] - df + 0.5) / (df + 0.5))
        score += idf * tf * (K1 + 1) / (tf + norm)
    return score


def _delete(conn, collection: str, source: str) -> None:
    rows = conn.execute(
        "SELECT c.id, t.terms FROM rag_chunks c JOIN rag_terms t ON t.rowid = c.id"
        " WHERE c.collection = ? AND c.path = ?",
        (collection, source),
    ).fetchall()
    ids = [(r[0],) for r in rows]
    removed: Counter[str] = Counter()
    for r in rows:
        removed.update(set(r[1].split()))
    _add_df(conn, collection, removed, -1)
    conn.executemany("DELETE FROM rag_terms WHERE rowid = ?", ids)
    conn.executemany("DELETE FROM rag_vectors WHERE chunk_id = ?", ids)
    conn.execute("DELETE FROM rag_chunks WHERE collection = ? AND path = ?", (collection, source))
    conn.execute(
        "DELETE FROM rag_documents WHERE collection = ? AND path = ?", (collection, source)
    )


def _title(sections: list[Section]) -> str:
    """The document's first line when it is short enough to be its title, else ''."""
    for section in sections:
        for line in section.text.splitlines():
            if line.strip():
                line = normalize_text(line)
                return line if len(line) <= TITLE_CHARS else ""
    return ""


TITLE_CHARS = 80


def _chunk_rows(sections: list[Section], mask: bool, max_chars: int):
    """Chunks of every section, normalised (and PII-masked with `mask`), each with the title
    of its document (a JSONL record's `title`) and, where the section marks its paragraphs,
    the section, paragraph and page its first sentence is in."""
    one_document = len({s.doc_id for s in sections}) == 1  # not a JSONL file of records
    title = _title(sections) if one_document else ""
    for section in sections:
        text, places = _prepared(section, mask)
        heading = str(section.meta.get("title") or title)
        if mask:
            heading = mask_pii(heading).text
        starts = [at for at, _ in places]
        for chunk in chunk_text(text, max_chars):
            where = places[bisect.bisect_right(starts, chunk.start) - 1][1] if places else {}
            yield {
                "title": heading,
                "doc_id": section.doc_id,
                "page": where.get("page", section.page),
                "start": chunk.start,
                "end": chunk.end,
                "text": chunk.text,
                "meta": {**section.meta, **_located(where)},
            }


def _located(where: dict[str, Any]) -> dict[str, Any]:
    return {k: where[k] for k in ("section", "paragraph") if k in where}


def _prepared(section: Section, mask: bool) -> tuple[str, list[tuple[int, dict[str, Any]]]]:
    """The section's text normalised (and masked), with its paragraphs' places moved to
    where they start in it: each paragraph is normalised on its own, since normalising and
    masking change lengths."""
    if not section.places:
        text = normalize_text(section.text)
        return (mask_pii(text).text if mask else text), []
    bounds = [at for at, _ in section.places] + [len(section.text) + 1]
    parts, places, at = [], [], 0
    for (start, where), end in zip(section.places, bounds[1:], strict=True):
        part = normalize_text(section.text[start : end - 1])
        part = mask_pii(part).text if mask and part else part
        if part:
            places.append((at, where))
            parts.append(part)
            at += len(part) + 1
    return "\n".join(parts), places
