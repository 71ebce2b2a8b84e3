"""Documents that are bombs: an HWP, HWPX or DOCX that inflates far past its size, or an HWPX
section built to be slow or hostile to parse, is refused with a named reason in the index
report while the other files of the run are indexed; and HWPX text is read by namespace, in
reading order, tables and text boxes included."""

from __future__ import annotations

import contextlib
import os
import time
import zipfile
from pathlib import Path

import pytest

from kollm.rag.index import RagIndex
from kollm.rag.ingest import IngestError, read_document
from kollm.rag.limits import MB, Budget, LimitError, Limits, inflate_raw, read_member
from kollm.samples.files import hwp_bytes, write_docx, write_hwp, write_hwpx

HEAD = '<?xml version="1.0" encoding="UTF-8"?>'
NAMESPACES = (
    'xmlns:hs="http://www.hancom.co.kr/hwpml/2011/section"'
    ' xmlns:hp="http://www.hancom.co.kr/hwpml/2011/paragraph"'
)


def _zip(path, members: dict[str, bytes | tuple[bytes, int]]) -> None:
    """A zip of `members`: bytes, or (chunk, times) written in a stream (a big member without
    holding it in memory)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            with archive.open(name, "w", force_zip64=True) as out:
                if isinstance(data, tuple):
                    for _ in range(data[1]):
                        out.write(data[0])
                else:
                    out.write(data)


def _reasons(report) -> dict[str, str]:
    return {f["path"].rsplit("/", 1)[-1]: f["reason"] for f in report.failures}


def test_zip_bombs_are_refused_by_name_and_the_run_goes_on(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    write_hwpx(root / "good.hwpx", [["주차 허가는 주차관리과에서 발급합니다."]])
    write_docx(root / "good.docx", ["여권 사진은 6개월 안에 찍은 것이어야 합니다."])
    _zip(root / "big.hwpx", {"Contents/section0.xml": (b" " * MB, 25)})  # 25 MB of blanks
    _zip(root / "dense.hwpx", {"Contents/section0.xml": (b" " * MB, 5)})
    write_docx(root / "bomb.docx", ["가"] * 100_000)  # a 3.5-MB document.xml, zipped 300:1
    report = RagIndex(tmp_path / "home").index_paths("c", [root])
    reasons = _reasons(report)
    assert report.indexed == 2 and set(reasons) == {"big.hwpx", "dense.hwpx", "bomb.docx"}
    assert reasons["big.hwpx"] == (
        "refused: Contents/section0.xml: over the uncompressed-size limit of 20 MB per part"
        " (rag.max_part_mb)"
    )
    assert reasons["dense.hwpx"].startswith("refused: Contents/section0.xml: compression ratio")
    assert reasons["dense.hwpx"].endswith(":1 over the limit of 100:1 (rag.max_ratio)")
    assert reasons["bomb.docx"].startswith("refused: word/document.xml: compression ratio")
    index = RagIndex(tmp_path / "home")
    assert index.search("c", "주차 허가")[0].doc_id == "good.hwpx"
    assert index.search("c", "여권 사진")[0].doc_id == "good.docx"


def test_a_docx_over_the_document_limit_is_refused_before_python_docx_reads_it(tmp_path):
    path = tmp_path / "photos.docx"
    write_docx(path, ["사진 첨부 보고서"])
    # photographs do not compress: three parts of 0.6 MB pass the ratio, not 1 MB in all
    with zipfile.ZipFile(path, "a") as archive:
        for i in range(3):
            archive.writestr(f"word/media/image{i}.jpeg", os.urandom(600_000))
    assert read_document(path, "photos.docx")[0].text == "사진 첨부 보고서"  # default limits
    limits = Limits(document_bytes=1 * MB, part_bytes=1 * MB, ratio=100)
    with pytest.raises(IngestError) as caught:
        read_document(path, "photos.docx", limits)
    assert str(caught.value) == (
        "refused: over the uncompressed-size limit of 1 MB per document (rag.max_document_mb)"
    )


def test_an_hwp_section_that_inflates_past_the_ratio_is_refused(tmp_path):
    root = tmp_path / "hwp"
    root.mkdir()
    write_hwp(root / "good.hwp", ["제1조(목적) 이 규정은 거주자 우선 주차를 정한다."])
    # 3 MB of text from a section stream of under 4 KB (the 42-KB HWP of issue 24 gave 32 MB)
    (root / "bomb.hwp").write_bytes(hwp_bytes(["가" * 1_500_000]))
    with pytest.raises(IngestError, match=r"^refused: BodyText/Section0: compression ratio"):
        read_document(root / "bomb.hwp", "bomb.hwp")
    report = RagIndex(tmp_path / "home").index_paths("h", [root])
    assert report.indexed == 1 and set(_reasons(report)) == {"bomb.hwp"}
    assert _reasons(report)["bomb.hwp"].endswith("over the limit of 100:1 (rag.max_ratio)")


def test_inflating_stops_at_the_cap(tmp_path):
    """An HWP stream has no declared size: what it inflates is counted as it is read, never
    more than a cap and one byte (here 8 MB against a cap of 1 MB); a zip member declaring
    more than a cap is refused before anything is inflated."""
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = packer.compress(b"\0" * (8 * MB)) + packer.flush()
    budget = Budget(Limits(document_bytes=64 * MB, part_bytes=1 * MB, ratio=10**6))
    with pytest.raises(LimitError, match="over the uncompressed-size limit of 1 MB per part"):
        inflate_raw(stream, "BodyText/Section0", budget)
    assert 1 * MB <= budget.used <= 1 * MB + 1
    path = tmp_path / "big.hwpx"
    _zip(path, {"Contents/section0.xml": (b" " * MB, 8)})
    budget = Budget(Limits(document_bytes=2 * MB, part_bytes=64 * MB, ratio=10**6))
    with zipfile.ZipFile(path) as archive, pytest.raises(LimitError, match="per document"):
        read_member(archive, archive.getinfo("Contents/section0.xml"), budget)
    assert budget.used == 0


def test_an_hwpx_of_unclosed_paragraphs_is_refused_in_bounded_time(tmp_path):
    """40,000 unclosed <hp:p> openers, under 1 KB zipped, took 45 s in a quadratic regex."""
    root = tmp_path / "docs"
    root.mkdir()
    write_hwpx(root / "good.hwpx", [["주차 허가는 주차관리과에서 발급합니다."]])
    section = f"{HEAD}<hs:sec {NAMESPACES}>" + "<hp:p><hp:run><hp:t>가" * 40_000
    _zip(root / "open.hwpx", {"Contents/section0.xml": section.encode()})
    started = time.monotonic()
    report = RagIndex(tmp_path / "home").index_paths("c", [root])
    assert time.monotonic() - started < 10
    assert report.indexed == 1
    assert _reasons(report)["open.hwpx"].startswith("Contents/section0.xml: ")


@pytest.mark.parametrize(
    "prolog, body",
    [
        ('<!DOCTYPE hs:sec [<!ENTITY a "가가가가가가가가">]>', "<hp:p><hp:t>&a;&a;</hp:t></hp:p>"),
        ('<!DOCTYPE hs:sec SYSTEM "http://example.invalid/x.dtd">', "<hp:p><hp:t>가</hp:t></hp:p>"),
        ("", "<hp:p><hp:t>닫히지 않은 문단</hp:p>"),
    ],
    ids=["entities", "external-dtd", "malformed"],
)
def test_a_hostile_or_malformed_section_is_a_named_refusal(tmp_path, prolog, body):
    path = tmp_path / "bad.hwpx"
    section = f"{HEAD}{prolog}<hs:sec {NAMESPACES}>{body}</hs:sec>"
    _zip(path, {"Contents/section0.xml": section.encode()})
    with pytest.raises(IngestError, match=r"^Contents/section0\.xml"):
        read_document(path, "bad.hwpx")


SECTION = (
    HEAD + '<hs:sec xmlns:hs="http://www.hancom.co.kr/hwpml/2011/section"'
    ' xmlns:x="http://www.hancom.co.kr/hwpml/2011/paragraph"'
    ' xmlns:hp10="http://www.hancom.co.kr/hwpml/2016/paragraph">'
    '<x:p><x:run><x:secPr/><x:t charPrIDRef="0">제1조(목적)<x:lineBreak/>이 규정은 주차를'
    "<x:markpenBegin/> 정한다.<x:markpenEnd/></x:t></x:run></x:p>"
    "<x:p><x:run><x:tbl><x:tr>"
    "<x:tc><x:subList><x:p><x:run><x:t>구분</x:t></x:run></x:p></x:subList></x:tc>"
    "<x:tc><x:subList><x:p><x:run><x:t>요금</x:t></x:run></x:p></x:subList></x:tc></x:tr><x:tr>"
    "<x:tc><x:subList><x:p><x:run><x:t>거주자</x:t></x:run></x:p></x:subList></x:tc>"
    "<x:tc><x:subList><x:p><x:run><x:t>월 2만 원</x:t></x:run></x:p>"
    "<x:p><x:run><x:t>(경차 반값)</x:t></x:run></x:p></x:subList></x:tc>"
    "</x:tr></x:tbl></x:run></x:p>"
    "<x:p><x:run><x:t>신청은<x:tab/>주민센터에서</x:t><x:rect><x:drawText><x:subList>"
    "<x:p><x:run><x:t>글상자: 온라인 신청 가능</x:t></x:run></x:p>"
    "</x:subList></x:drawText></x:rect><x:t>받습니다.</x:t></x:run></x:p>"
    "<hp10:p><hp10:run><hp10:t>2016 네임스페이스의 문단 &amp; 기호</hp10:t></hp10:run></hp10:p>"
    "</hs:sec>"
)


def test_hwpx_text_keeps_tables_text_boxes_line_breaks_and_any_prefix(tmp_path):
    path = tmp_path / "rules.hwpx"
    _zip(path, {"mimetype": b"application/hwp+zip", "Contents/section0.xml": SECTION.encode()})
    (section,) = read_document(path, "rules.hwpx")
    assert section.text.split("\n") == [
        "제1조(목적)",
        "이 규정은 주차를 정한다.",
        "구분 | 요금",
        "거주자 | 월 2만 원 (경차 반값)",
        "신청은\t주민센터에서",
        "글상자: 온라인 신청 가능",
        "받습니다.",
        "2016 네임스페이스의 문단 & 기호",
    ]


def _lying_member(path, name: str, inflated: int) -> None:
    """Rewrite the zip at `path` so that member `name` is followed in its deflate stream by
    `inflated` zeros, its headers still declaring (and checksumming) the real content."""
    import struct
    import zlib

    with zipfile.ZipFile(path) as archive:
        members = {i.filename: archive.read(i) for i in archive.infolist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, content in members.items():
            with archive.open(member, "w") as out:
                out.write(content)
                for _ in range(inflated // MB if member == name else 0):
                    out.write(bytes(MB))
    data, key = bytearray(path.read_bytes()), name.encode()
    for signature, at_crc, name_at in ((b"PK\x03\x04", 14, 30), (b"PK\x01\x02", 16, 46)):
        header = data.find(signature)
        while data[header + name_at : header + name_at + len(key)] != key:
            header = data.find(signature, header + 1)
        struct.pack_into("<I", data, header + at_crc, zlib.crc32(members[name]))
        struct.pack_into("<I", data, header + at_crc + 8, len(members[name]))
    path.write_bytes(bytes(data))


def test_a_docx_member_that_lies_about_its_size_never_inflates_past_it(tmp_path):
    """python-docx reads parts with ZipFile.read, which inflates a member's whole stream in one
    call: a document.xml declaring its 1 KB over 200 MB more of zeros took 200 MB before the
    declared size cut it. Read through the budget, it costs what it declares."""
    import tracemalloc

    path = tmp_path / "liar.docx"
    write_docx(path, ["주민등록증 재발급은 가까운 주민센터에서 신청합니다."])
    _lying_member(path, "word/document.xml", 200 * MB)
    assert path.stat().st_size < 2 * MB
    tracemalloc.start()
    try:
        sections = read_document(path, "liar.docx")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "주민센터" in sections[0].text
    assert peak < 20 * MB, f"{peak / MB:.0f} MB inflated"


def _hwp_record(tag: int, level: int, payload: bytes = b"") -> bytes:
    return (tag | level << 10 | len(payload) << 20).to_bytes(4, "little") + payload


def test_an_hwp_nested_past_any_real_document_is_refused_by_name(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    write_hwp(root / "good.hwp", ["제1조(목적) 이 규정은 거주자 우선 주차를 정한다."])
    # a paragraph in a list in a drawn object in a paragraph ... 600 levels down: the reader
    # recurses through controls, and HWP's ten-bit levels allow 1,023, past Python's stack
    text = (11).to_bytes(2, "little") + b" osg" + b"\0" * 8 + (11).to_bytes(2, "little")
    deep = b"".join(
        _hwp_record(0x10 + 50, level, b"\0" * 22)  # PARA_HEADER
        + _hwp_record(0x10 + 51, level + 1, text + "안".encode("utf-16-le"))  # PARA_TEXT
        + _hwp_record(0x10 + 55, level + 1, b" osg")  # CTRL_HEADER: a drawn object
        + _hwp_record(0x10 + 56, level + 2, b"\1\0" + b"\0" * 6)  # LIST_HEADER
        for level in range(0, 600, 2)
    )
    (root / "deep.hwp").write_bytes(hwp_bytes([], section=deep))
    report = RagIndex(tmp_path / "home").index_paths("d", [root])
    assert report.indexed == 1
    assert [f["reason"] for f in report.failures] == ["records nested deeper than 100 levels"]


def test_damaged_hwp_records_are_read_or_refused_never_a_crash():
    import random
    import zlib

    import olefile

    from kollm.rag.hwp import HwpDocument, HwpError, _section

    path = Path(__file__).parent / "public" / "pyhwp-sample-5017.hwp"
    with olefile.OleFileIO(str(path)) as ole:
        body = zlib.decompress(ole.openstream("BodyText/Section0").read(), -15)
    rng = random.Random(5017)
    for _ in range(300):
        damaged = bytearray(body)
        for _ in range(rng.randint(1, 30)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        damaged = damaged[: rng.randrange(len(damaged) + 1)] if rng.random() < 0.3 else damaged
        with contextlib.suppress(HwpError):  # a refusal is fine; any other error is not
            _section(1, bytes(damaged), HwpDocument([], False))
