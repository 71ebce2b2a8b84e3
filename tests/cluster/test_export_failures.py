"""An export that fails half way (a full disk, a converter error) leaves no staged dir in the
output dir, and an earlier export there stays as it was."""

from __future__ import annotations

import errno
import shutil

import pytest

from kollm.cluster import export


def _model(path):
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"\x00" * 64)
    (path / "config.json").write_text("{}")
    return path


def test_a_failed_hf_copy_leaves_no_staged_dir(tmp_path, monkeypatch):
    model, out = _model(tmp_path / "model"), tmp_path / "out"
    real = shutil.copytree

    def copy_then_fill_the_disk(source, target, **options):
        real(source, target, **options)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export.shutil, "copytree", copy_then_fill_the_disk)
    with pytest.raises(OSError, match="No space"):
        export.export_model(str(model), "hf", out)
    assert list(out.iterdir()) == []


def test_a_failed_ct2_conversion_leaves_no_staged_dir_and_keeps_the_earlier_export(
    tmp_path, monkeypatch
):
    import ctranslate2

    model, out = _model(tmp_path / "model"), tmp_path / "out"
    (out / "ct2-int8").mkdir(parents=True)
    (out / "ct2-int8" / "model.bin").write_bytes(b"earlier")

    class Converter:
        def __init__(self, model_dir) -> None:
            pass

        def convert(self, target, **options):
            with open(f"{target}/model.bin", "wb") as half:
                half.write(b"half")
            raise RuntimeError("conversion failed")

    monkeypatch.setattr(ctranslate2.converters, "TransformersConverter", Converter)
    with pytest.raises(RuntimeError, match="conversion failed"):
        export.export_model(str(model), "ct2", out)
    assert [p.name for p in out.iterdir()] == ["ct2-int8"]
    assert (out / "ct2-int8" / "model.bin").read_bytes() == b"earlier"
