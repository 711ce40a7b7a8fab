"""The GPU-compile lane: every Triton kernel compiled for sm_80 and sm_90 through its launcher, on
this CPU-only machine (benchmarks/compile_table.py, a stub driver and meta tensors), checked for
spills and occupancy, and its resource table written as an artefact (MASKDPO_ARTIFACTS, else a
temporary folder)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from compile_table import blocks_per_sm  # noqa: E402

from maskdpo.kernels.launch import DEFAULTS, VARIANTS  # noqa: E402


def test_blocks_per_sm_follows_the_occupancy_rules():
    # Written out from the CUDA occupancy rules (65536 registers, allocated per warp in units of 256;
    # 2048 threads; 32 blocks; shared memory per SM less 1 KB reserved per block).
    assert blocks_per_sm(90, 64, 8, 0) == 65536 // (64 * 32 * 8)                 # registers: 4
    assert blocks_per_sm(90, 65, 4, 0) == 65536 // ((65 * 32 + 255) // 256 * 256 * 4)  # 2304 per warp: 7
    assert blocks_per_sm(90, 16, 4, 0) == 2048 // 128                            # threads: 16
    assert blocks_per_sm(80, 32, 1, 0) == 32                                     # the block cap
    assert blocks_per_sm(80, 32, 4, 40 * 1024) == 164 * 1024 // (41 * 1024)     # shared memory: 4


@pytest.mark.slow
def test_every_kernel_compiles_for_sm80_and_sm90_without_spills(tmp_path):
    out = Path(os.environ.get("MASKDPO_ARTIFACTS", tmp_path)) / "compile-table"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # compile for real, not from an old cache
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile_table.py"), "--out-dir", str(out)],
                            env=env, capture_output=True, text=True, timeout=600)
    table = json.loads((out / "compile-table.json").read_text())
    assert table["failures"] == [], table["failures"]
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table["rows"]
    streaming = [r for r in rows if r["kernel"] != "_segment_sum_kernel"]

    def cases(**match):
        return [r for r in streaming if all(r[k] == v for k, v in match.items())]

    for arch in (80, 90):
        for kernel in ("_sequence_logps_fwd_kernel", "_sequence_logps_bwd_kernel"):
            for dtype in ("bfloat16", "float16", "float32"):
                for variant in VARIANTS:  # every launch variant the launcher can pick
                    assert cases(arch=arch, kernel=kernel, dtype=dtype, variant=variant, vocab=128256)
                for vocab in (32000, 128256, 32001):
                    for layout in ("contiguous", "shifted-view", "column-strided"):
                        assert cases(arch=arch, kernel=kernel, dtype=dtype, vocab=vocab, layout=layout)
                assert all(r["wide"] for r in cases(arch=arch, kernel=kernel, dtype=dtype, layout="wide-offsets"))
                assert cases(arch=arch, kernel=kernel, dtype=dtype, layout="wide-offsets")
            # Odd V keeps 16-byte vectors: rows start on an aligned column.
            assert {r["align"] for r in cases(arch=arch, kernel=kernel, dtype="bfloat16", vocab=32001,
                                             layout="contiguous")} == {8}
        assert [r for r in rows if r["kernel"] == "_segment_sum_kernel" and r["arch"] == arch]
        assert cases(arch=arch, dtype="float64")
    for r in rows:
        if r["dtype"] != "float64":
            assert r["spill_bytes"] == 0, r
            assert r["kernel"] == "_segment_sum_kernel" or r["blocks_per_sm"] >= 2, r
    # The per-architecture defaults are among the variants that compiled cleanly.
    assert set(DEFAULTS.values()) <= set(VARIANTS)
    assert (out / "compile-table.md").read_text().count("| sm_") == len(
        {(r["arch"], r["kernel"], r["dtype"], r["vocab"], r["layout"], r["variant"]) for r in rows})
