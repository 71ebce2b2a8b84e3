"""ExactDeduplicator and MinhashDeduplicator: the first occurrence stays, later copies go.

Near-duplicates are found on character n-gram shingles: a Korean particle change (`은` -> `는`)
alters a whole word but only n of its character n-grams. Signatures are computed for a batch of
records at once with numpy; datasketch's MinHashLSH indexes them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from kollm.data.records import Record, key_text
from kollm.data.steps.base import Drop, Step
from kollm.text.normalize import PLACEHOLDER_RE

_SPACE_RE = re.compile(r"\s+")
LSH_WEIGHTS = (0.1, 0.9)  # (false positive, false negative) weights of datasketch's band choice


def shingle_text(text: str) -> str:
    """What shingles are cut from: no whitespace (Korean spacing varies), lower case, and each
    placeholder one private-use character so that `#Person1#` tags add no shared n-grams."""
    text = PLACEHOLDER_RE.sub("\ue000", text)
    return _SPACE_RE.sub("", text).lower()


def shingles(text: str, n: int) -> list[str]:
    """Character n-grams of `shingle_text(text)`; a shorter text is one shingle."""
    text = shingle_text(text)
    if len(text) <= n:
        return [text] if text else []
    return [text[i : i + n] for i in range(len(text) - n + 1)]


def shingle_hashes(text: str, n: int) -> np.ndarray:
    """32-bit hashes of the character n-grams of `shingle_text(text)`, shape (n_shingles,).

    A polynomial hash over code points, computed for all n-grams at once, then mixed with the
    64-bit MurmurHash3 finaliser so that similar n-grams land far apart.
    """
    text = shingle_text(text)
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if codes.size == 0:
        return np.zeros(0, dtype=np.uint32)
    width = min(n, codes.size)
    count = codes.size - width + 1
    h = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(width):  # h = sum codes[i + k] * P^(width-1-k), wrapping at 2^64
            h = h * np.uint64(1_000_003) + codes[k : k + count]
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
    return (h >> np.uint64(32)).astype(np.uint32)


class MinhashSigner:
    """MinHash signatures in datasketch's `affine32` scheme, many documents per numpy call."""

    def __init__(self, num_perm: int = 128, seed: int = 1) -> None:
        self.num_perm, self.seed = num_perm, seed
        a, b = MinHash(num_perm=num_perm, seed=seed).permutations
        self._a = a.astype(np.uint32)[None, :]  # (1, num_perm)
        self._b = b.astype(np.uint32)[None, :]

    def sign_many(self, hash_arrays: list[np.ndarray]) -> np.ndarray:
        """Signatures of several documents, shape (n_docs, num_perm), uint32."""
        sizes = np.array([max(len(h), 1) for h in hash_arrays])
        filled = [h if len(h) else np.zeros(1, dtype=np.uint32) for h in hash_arrays]
        hv = np.concatenate(filled)[:, None]  # (total_shingles, 1)
        with np.errstate(over="ignore"):
            permuted = hv * self._a + self._b  # (total_shingles, num_perm), wraps at 2^32
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        return np.minimum.reduceat(permuted, starts, axis=0)

    def lean(self, signature: np.ndarray) -> LeanMinHash:
        return LeanMinHash(seed=self.seed, hashvalues=signature, scheme="affine32")


class ExactDeduplicator(Step):
    name = "exact_dedup"

    def __init__(self, fields: tuple[str, ...] | list[str]) -> None:
        super().__init__()
        self.fields = tuple(fields)
        self._seen: dict[bytes, str] = {}

    def key(self, record: Record) -> bytes:
        """What two copies share: a hash of the normalised key text."""
        return hashlib.blake2b(
            shingle_text(key_text(record, self.fields)).encode(), digest_size=16
        ).digest()

    def process(self, record: Record) -> Drop | None:
        digest = self.key(record)
        first = self._seen.get(digest)
        if first is not None:
            return Drop("exact_duplicate", {"duplicate_of": first})
        self._seen[digest] = str(record.get("id", len(self._seen)))
        return None


class MinhashDeduplicator(Step):
    name = "near_dedup"

    def __init__(
        self,
        fields: tuple[str, ...] | list[str],
        threshold: float = 0.6,
        ngram: int = 4,
        num_perm: int = 128,
        batch_size: int = 256,
    ) -> None:
        super().__init__()
        self.fields, self.threshold, self.ngram = tuple(fields), threshold, ngram
        self.batch_size = batch_size
        self.signer = MinhashSigner(num_perm)
        # LSH bands lean towards recall (a miss is a duplicate kept, and cannot be mended);
        # the signature comparison in `process` then removes the extra candidates.
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
        self._signatures: dict[str, np.ndarray] = {}
        self._pending: dict[int, np.ndarray] = {}

    def run(self, records: Iterable[Record], dropped: list[dict] | None = None) -> Iterator[Record]:
        batch: list[Record] = []
        for record in records:
            batch.append(record)
            if len(batch) == self.batch_size:
                yield from self._run_batch(batch, dropped)
                batch = []
        if batch:
            yield from self._run_batch(batch, dropped)

    @property
    def bands(self) -> tuple[int, int]:
        """(bands, rows per band) of the LSH index: two records are candidates when all the
        rows of one band are equal."""
        return self.lsh.b, self.lsh.r

    def signatures(self, records: list[Record]) -> np.ndarray:
        """MinHash signatures of the records' key text, shape (len(records), num_perm)."""
        hashes = [shingle_hashes(key_text(r, self.fields), self.ngram) for r in records]
        return self.signer.sign_many(hashes)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        """Estimated Jaccard similarity of two signatures."""
        return float(np.mean(a == b))

    def _run_batch(self, batch: list[Record], dropped: list[dict] | None) -> Iterator[Record]:
        signatures = self.signatures(batch)
        self._pending = {id(r): sig for r, sig in zip(batch, signatures, strict=True)}
        yield from super().run(batch, dropped)

    def process(self, record: Record) -> Drop | None:
        signature = self._pending.pop(id(record))
        minhash = self.signer.lean(signature)
        # LSH returns candidates; keep only those whose estimated Jaccard reaches the threshold.
        best_key, best = None, 0.0
        for key in self.lsh.query(minhash):
            similarity = self.similarity(self._signatures[key], signature)
            if similarity > best:
                best_key, best = key, similarity
        if best_key is not None and best >= self.threshold:
            return Drop("near_duplicate", {"duplicate_of": best_key, "similarity": round(best, 3)})
        key = str(record.get("id", f"#{len(self._signatures)}"))
        if key in self._signatures:
            key = f"{key}#{len(self._signatures)}"
        self.lsh.insert(key, minhash, check_duplication=False)
        self._signatures[key] = signature
        return None
