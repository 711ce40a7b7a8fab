"""The factuality benchmark's summary: means, spreads and the target order, from per-seed results."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_factuality_demo as bench  # noqa: E402


def run(seed, base, dpo, mask, fs=None):
    models = {name: {"anah_score": score, "factscore": fs, "sentences_per_response": 5.0}
              for name, score in (("base", base), ("dpo", dpo), ("mask_dpo", mask))}
    return {"seed": seed, "seconds": 100.0 + seed, "results": {"models": models},
            "labels": {m: {"ok": 1} for m in bench.MODELS}}


def test_the_summary_holds_mean_spread_and_the_order_on_every_seed():
    summary = bench.summarise([run(0, 40.0, 50.0, 60.0), run(1, 44.0, 46.0, 70.0, fs=20.0)])
    mask = summary["models"]["mask_dpo"]["anah_score"]
    assert (mask["mean"], mask["std"], mask["min"], mask["max"]) == (65.0, 5.0, 60.0, 70.0)
    assert summary["models"]["base"]["factscore"]["mean"] == 20.0  # the seed without FactScore left out
    assert summary["mask_dpo_above_dpo_above_base_on_every_seed"] and summary["mask_dpo_above_dpo_on_every_seed"]
    worse = bench.summarise([run(0, 40.0, 50.0, 60.0), run(1, 50.0, 46.0, 70.0)])  # DPO below base once
    assert not worse["mask_dpo_above_dpo_above_base_on_every_seed"] and worse["mask_dpo_above_dpo_on_every_seed"]
    table = bench.markdown(summary, quick=False)
    assert "| mask_dpo | 65.00 ± 5.00 [60.0, 70.0] | 60.0, 70.0 |" in table
    with pytest.raises(KeyError):
        bench.summarise([{"seed": 0}])
