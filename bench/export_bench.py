"""Export benchmark: time and size of `kollm export --format gguf` at f16 and q8_0 (llama.cpp's
converter) and of the CTranslate2 int8 dir, for the 0.5B-shaped bench model of
serve_bench.py (random weights, Qwen2 shape, a BPE learnt from the bundled data).

    .venv/bin/python bench/export_bench.py [--layers 24]

The baseline in the same run is the model's own safetensors (float32): each row prints its
size against it. The last line reads `q8_0/f16 size R1  q8_0/f16 time R2  f16 MB M1  q8_0 MB M2`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from kollm.cluster.export import export_model
    from serve_bench import build_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=24)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        build_model(model, args.layers)
        base_mb = (model / "model.safetensors").stat().st_size / 1e6
        print(f"baseline: safetensors float32 {base_mb:.0f} MB")
        rows = {}
        for fmt, quant in (("gguf", "f16"), ("gguf", "q8_0"), ("ct2", "int8")):
            started = time.perf_counter()
            result = export_model(str(model), fmt, Path(tmp) / "out", quant)
            took = time.perf_counter() - started
            mb = result.size_bytes / 1e6
            rows[quant] = (took, mb)
            print(f"{fmt:4} {quant:5} {took:6.1f} s  {mb:7.0f} MB  ({mb / base_mb:.2f}x float32)")
    (t16, m16), (t8, m8) = rows["f16"], rows["q8_0"]
    ratios = f"q8_0/f16 size {m8 / m16:.2f}  q8_0/f16 time {t8 / t16:.2f}"
    print(f"{ratios}  f16 MB {m16:.0f}  q8_0 MB {m8:.0f}")


if __name__ == "__main__":
    main()
