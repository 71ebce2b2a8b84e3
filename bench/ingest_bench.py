"""How much of each document's text `kollm rag index` reads, on files kollm did not write.

For each file of a folder (default: tests/rag/public, public HWP, HWPX, DOCX and PDF files
with their sources and licences in its README), the text kollm extracts is compared with
independent references as Hangul-syllable recall (the share of the reference's syllables,
counted with multiplicity, found in kollm's text):

- `references/<file>.txt` beside the files: another public reader's output (pyhwp for HWP,
  opendataloader-pdf for PDF; the README says how each was made);
- the preview text the writing application saved in the file (HWP's PrvText stream, HWPX's
  Preview/PrvText.txt: Hancom Office's own rendering of the first page or so);
- the file's own structure read here with the standard library: every <t> of an HWPX
  section, every <w:t> of a DOCX's body, headers, footers and notes.

A file's recall is the lowest over its references. It prints each file, the overall recall
(matched over reference syllables, all files), the files below 0.9, the refusals with their
reasons, and the speed (pages/s, files/s) of reading the set, best of --repeat runs.

    .venv/bin/python bench/ingest_bench.py [--dir FOLDER] [--repeat 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kollm.rag.ingest import SUFFIXES, IngestError, read_document  # noqa: E402

CORPUS = ROOT / "tests" / "rag" / "public"
HANGUL = re.compile("[\uac00-\ud7a3]")
LOW = 0.9


def syllables(text: str) -> collections.Counter:
    return collections.Counter(HANGUL.findall(text))


def recall(reference: str, text: str) -> tuple[int, int]:
    """(reference syllables found in `text`, reference syllables)."""
    wanted, got = syllables(reference), syllables(text)
    return sum(min(n, got[s]) for s, n in wanted.items()), sum(wanted.values())


def references(path: Path) -> dict[str, str]:
    """Each independent reference text of `path` that has Hangul, by its kind."""
    found = {}
    committed = path.parent / "references" / f"{path.name}.txt"
    if committed.exists() and HANGUL.search(text := committed.read_text(encoding="utf-8")):
        found["reader"] = text
    suffix = path.suffix.lower()
    readers = {".hwp": (_hwp_preview,), ".hwpx": (_hwpx_preview, _hwpx_t), ".docx": (_docx_t,)}
    for read in readers.get(suffix, ()):
        try:
            text = read(path)
        except Exception:  # a reference the file does not have (or a refused file)
            continue
        if text and HANGUL.search(text):
            found[read.__name__.strip("_")] = text
    return found


def _hwp_preview(path: Path) -> str:
    import olefile

    with olefile.OleFileIO(str(path)) as ole:
        return ole.openstream("PrvText").read().decode("utf-16-le", "replace")


def _hwpx_preview(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.lower() == "preview/prvtext.txt")
        return archive.read(name).decode("utf-8", "replace")


def _texts(xml: bytes, local: str) -> list[str]:
    root = ET.fromstring(xml)
    return ["".join(e.itertext()) for e in root.iter() if str(e.tag).endswith("}" + local)]


def _hwpx_t(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if re.fullmatch(r"Contents/section\d+\.xml", n)]
        return "\n".join(t for n in names for t in _texts(archive.read(n), "t"))


def _docx_t(path: Path) -> str:
    parts = re.compile(r"word/(document|header\d*|footer\d*|footnotes|endnotes)\.xml")
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if parts.fullmatch(n)]
        return "\n".join(t for n in names for t in _texts(archive.read(n), "t"))


def pages(path: Path, sections) -> int:
    """The pages a reader would count: a PDF's pages, the last page an HWP or HWPX records
    (its sections where it records none), the page count Word saves in a DOCX."""
    known = [where["page"] for s in sections for _, where in s.places if "page" in where]
    if path.suffix.lower() == ".pdf":
        return len(sections)
    if known:
        return max(known)
    if path.suffix.lower() == ".docx":
        with zipfile.ZipFile(path) as archive:
            match = re.search(rb"<Pages>(\d+)</Pages>", archive.read("docProps/app.xml"))
            return int(match.group(1)) if match else 1
    return max(len(sections), 1)


def measure(path: Path) -> dict:
    """One file: read or refused, its pages and its recall against each reference."""
    row: dict = {"file": path.name, "format": path.suffix.lower()[1:]}
    try:
        sections = read_document(path, path.name)
    except IngestError as err:
        return {**row, "refused": str(err)}
    text = "\n".join(s.text for s in sections)
    row.update(pages=pages(path, sections), syllables=sum(syllables(text).values()))
    scores = {kind: recall(ref, text) for kind, ref in references(path).items()}
    row["references"] = {k: {"found": f, "of": n} for k, (f, n) in scores.items()}
    if scores:
        row["recall"] = min(f / n for f, n in scores.values())
    return row


def speed(files: list[Path], repeat: int) -> float:
    """Seconds to read every readable file once, best of `repeat`."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for path in files:
            read_document(path, path.name)
        best = min(best, time.perf_counter() - started)
    return best


def run(folder: Path, repeat: int = 3) -> dict:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
    rows = [measure(p) for p in files]
    found = sum(r["found"] for row in rows for r in row.get("references", {}).values())
    total = sum(r["of"] for row in rows for r in row.get("references", {}).values())
    readable = [folder / r["file"] for r in rows if "refused" not in r]
    seconds = speed(readable, repeat)
    page_count = sum(r["pages"] for r in rows if "refused" not in r)
    return {
        "folder": str(folder),
        "files": rows,
        "recall": found / total if total else None,
        "below": [r["file"] for r in rows if r.get("recall", 1.0) < LOW],
        "refused": {r["file"]: r["refused"] for r in rows if "refused" in r},
        "pages": page_count,
        "seconds": seconds,
        "pages_per_s": page_count / seconds if seconds else None,
        "files_per_s": len(readable) / seconds if seconds else None,
    }


def report(result: dict) -> str:
    lines = [f"{'file':44} {'fmt':5} {'pages':>5} {'syll':>6} {'recall':>7}  references"]
    for row in result["files"]:
        if "refused" in row:
            lines.append(f"{row['file']:44} {row['format']:5} refused: {row['refused']}")
            continue
        score = f"{row['recall']:.3f}" if "recall" in row else "-"
        refs = ", ".join(f"{k} {v['found']}/{v['of']}" for k, v in row["references"].items())
        lines.append(
            f"{row['file']:44} {row['format']:5} {row['pages']:>5} {row['syllables']:>6} "
            f"{score:>7}  {refs or 'none'}"
        )
    overall = result["recall"]
    lines += [
        f"syllable recall {overall:.4f} over {len(result['files'])} files"
        if overall is not None
        else "no reference with Hangul",
        f"files below {LOW}: {', '.join(result['below']) or 'none'}",
        f"refused: {len(result['refused'])}",
        f"speed: {result['pages']} pages in {result['seconds']:.2f} s: "
        f"{result['pages_per_s']:.1f} pages/s, {result['files_per_s']:.1f} files/s",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=CORPUS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="Write the figures here too.")
    args = parser.parse_args()
    result = run(args.dir, args.repeat)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
