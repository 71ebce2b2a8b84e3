"""Distribution HWP documents (배포용 문서): their ViewText sections are read (the distribution
record unscrambled, the AES-128-ECB ciphertext decrypted, then inflated within the document's
limits) and the index report names them in its notes; password-protected ones stay refused."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import olefile
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from kollm.rag.hwp import distribution_key as hwp_distribution_key
from kollm.rag.index import RagIndex
from kollm.rag.ingest import IngestError, read_document
from kollm.rag.limits import Limits
from kollm.samples.files import hwp_bytes

FILES = Path(__file__).parent / "files"
KEY = bytes(range(0x40, 0x50))


def _msvc_xor(record: bytes) -> bytes:
    """The spec's loop, written out as pyhwp's hwp5.distdoc describes it (not the reader's
    code): a byte from MSVC's rand(), seeded by the first four bytes, XORed into a run of
    1 + rand() % 16 bytes past the first four."""
    data, seed, n, key = bytearray(record), int.from_bytes(record[:4], "little"), 0, 0

    def rand() -> int:
        nonlocal seed
        seed = (seed * 214013 + 2531011) & 0xFFFFFFFF
        return (seed >> 16) & 0x7FFF

    for i in range(256):
        if n == 0:
            key, n = rand() & 0xFF, (rand() & 0xF) + 1
        if i >= 4:
            data[i] ^= key
        n -= 1
    return bytes(data)


def _distribute(section: bytes, seed: bytes = b"\x37\x9a\x01\x5c") -> bytes:
    """A ViewText stream: a DISTRIBUTE_DOC_DATA record (tag 28, 256 bytes) holding KEY at
    4 + (seed & 15) before scrambling, then the section AES-128-ECB encrypted."""
    start = 4 + (seed[0] & 0x0F)
    plain = bytearray(hashlib.sha256(seed).digest() * 8)
    plain[:4], plain[start : start + 16] = seed, KEY
    head = (28 | 256 << 20).to_bytes(4, "little") + _msvc_xor(bytes(plain))
    padded = section + b"\0" * (-len(section) % 16)
    encryptor = Cipher(algorithms.AES(KEY), modes.ECB()).encryptor()
    return head + encryptor.update(padded) + encryptor.finalize()


def test_distribution_documents_are_indexed_with_a_note(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    text = ["배포용 문서의 본문입니다.", "제3조(열람) 누구나 열람할 수 있다."]
    (root / "dist.hwp").write_bytes(hwp_bytes(text, distribute=_distribute))
    plain = hwp_bytes(["압축하지 않은 배포용 문서"], False, distribute=_distribute)
    (root / "dist-plain.hwp").write_bytes(plain)
    (root / "locked.hwp").write_bytes(hwp_bytes(["비밀"], flags=2))
    # a password and the distribution bit together: still refused for its password
    (root / "locked-dist.hwp").write_bytes(hwp_bytes(["비밀"], flags=2, distribute=_distribute))
    index = RagIndex(tmp_path / "home")
    report = index.index_paths("d", [root])
    reasons = {Path(f["path"]).name: f["reason"] for f in report.failures}
    assert reasons == {
        "locked.hwp": "the HWP file is password-protected",
        "locked-dist.hwp": "the HWP file is password-protected",
    }
    assert report.indexed == 2
    notes = {Path(n["path"]).name: n["note"] for n in report.notes}
    assert set(notes) == {"dist.hwp", "dist-plain.hwp"}
    assert all("배포용 문서" in n for n in notes.values())
    (hit, *_) = index.search("d", "누구나 열람할 수 있나요")
    assert hit.doc_id == "dist.hwp" and hit.text == "\n".join(text)
    assert index.search("d", "압축하지 않은")[0].doc_id == "dist-plain.hwp"
    written, page = index.write_report(report)
    assert json.loads(written.read_text())["notes"] == report.notes
    assert "dist.hwp" in page.read_text()


def test_a_distribution_document_stays_within_its_limits(tmp_path):
    path = tmp_path / "big.hwp"
    path.write_bytes(hwp_bytes(["가나다라마바사 " * 400], distribute=_distribute))
    limits = Limits(document_bytes=2000, part_bytes=1 << 20, ratio=1000)
    with pytest.raises(IngestError, match=r"rag\.max_document_mb"):
        read_document(path, "big.hwp", limits)
    assert "가나다라" in read_document(path, "big.hwp")[0].text


def test_a_view_text_without_its_distribution_record_is_named(tmp_path):
    path = tmp_path / "broken.hwp"
    path.write_bytes(hwp_bytes(["본문"], distribute=lambda body: body))
    with pytest.raises(IngestError, match="ViewText/Section0 has no distribution record"):
        read_document(path, "broken.hwp")


def test_a_real_distribution_document_made_by_hancom_office():
    """pyhwp's fixture (tests/rag/files/README.md): the text pyhwp's own expected output
    gives, and it is named a distribution document."""
    (section,) = read_document(FILES / "pyhwp-viewtext.hwp", "viewtext.hwp")
    assert section.text == "pyhwp 테스트를 위한 배포 문서 예제입니다."
    assert "배포용 문서" in section.note
    # pyhwp's test_distdoc: the key is the start of the password's SHA-1 (hex, UTF-16LE)
    with olefile.OleFileIO(str(FILES / "pyhwp-viewtext.hwp")) as ole:
        record = ole.openstream("ViewText/Section0").read()[4:260]
    password = hashlib.sha1(b"12345").hexdigest().upper().encode("utf-16-le")
    assert hwp_distribution_key(record) == password[:16]


@pytest.mark.skipif(
    not os.environ.get("KOLLM_HANCOM_SPEC_HWP"), reason="KOLLM_HANCOM_SPEC_HWP not set"
)
def test_hancoms_own_format_document():
    """Hancom's HWP 5.0 format document is itself a distribution document (342 KB, too big
    to keep here; hahnlee/hwp-rs keeps a copy in its tests): set KOLLM_HANCOM_SPEC_HWP to it."""
    sections = read_document(Path(os.environ["KOLLM_HANCOM_SPEC_HWP"]), "spec.hwp")
    text = "\n".join(s.text for s in sections)
    assert "HWPTAG_DISTRIBUTE_DOC_DATA" in text and "본 문서에 대하여" in text


def test_rag_index_prints_the_note(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from kollm.cli import app

    root = tmp_path / "docs"
    root.mkdir()
    (root / "dist.hwp").write_bytes(hwp_bytes(["배포용 문서의 본문"], distribute=_distribute))
    monkeypatch.setenv("KOLLM_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["rag", "index", str(root), "--collection", "d"])
    assert result.exit_code == 0, result.output
    assert "1 indexed" in result.output and "0 failed" in result.output
    assert "note: " in result.output and "배포용 문서" in result.output
