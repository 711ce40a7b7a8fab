"""The factuality demo over several seeds: its wall time (the demo's budget: under 10 minutes on 2
cores, --quick under 3) and the paper's comparison in the world -- base, plain DPO and Mask-DPO
on unseen test topics -- with the mean and spread over seeds, and the sentence counts (whether a gain
comes from saying less, i.e. hedging, or from saying truer things).

    python benchmarks/bench_factuality_demo.py --seeds 0 1 2 [--quick] [--out DIR] [--work DIR]

Each seed runs `maskdpo demo factuality` as a user runs it (a subprocess) into WORK/seed-S; the
summary goes to OUT (default benchmarks/results/<date>-cpu/factuality-world/) as summary.json and
summary.md, with every seed's results.json and training plot copied next to them, and its world and
each model's annotated answers in OUT/seed-S/ (the breakdown by exposure is recomputed from those).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("base", "dpo", "mask_dpo")


def label_counts(annotated: Path) -> dict:
    counts: dict[str, int] = {}
    for line in annotated.read_text().splitlines():
        for s in json.loads(line)["sentences"]:
            counts[s["label"]] = counts.get(s["label"], 0) + 1
    return counts


def labels_by_exposure(world_json: Path, annotated: dict[str, Path]) -> dict:
    """model -> exposure (times the base policy's corpus showed the person, as a string) -> label ->
    count, over every test answer's sentences but the world's fixed opening: where a gain comes from
    (hedging, "nofact", versus stating true facts, "ok") and about whom. `annotated`: model -> its
    annotated answers (a demo's DIR/<model>/annotated.jsonl, or the copies keep_answers makes)."""
    from maskdpo.demos.factuality.world import OPENING

    exposure = {p["name"]: str(p["exposure"]) for p in json.loads(world_json.read_text())["people"]}
    out = {}
    for model, path in annotated.items():
        counts = out.setdefault(model, {})
        for line in path.read_text().splitlines():
            record = json.loads(line)
            level = counts.setdefault(exposure[record["topic"]], {})
            for s in record["sentences"]:
                if record["response"][s["start"]:s["end"]].strip() != OPENING:
                    level[s["label"]] = level.get(s["label"], 0) + 1
    return out


def demo_answers(run_dir: Path) -> tuple[Path, dict[str, Path]]:
    """(world.json, model -> annotated answers) of a demo's output directory."""
    return run_dir / "world" / "world.json", {m: run_dir / m / "annotated.jsonl" for m in MODELS}


def kept_answers(seed_dir: Path) -> tuple[Path, dict[str, Path]]:
    """The same, of a results folder's seed-S/ (what keep_answers wrote)."""
    return seed_dir / "world.json", {m: seed_dir / f"{m}.annotated.jsonl" for m in MODELS}


def keep_answers(run_dir: Path, out: Path) -> None:
    """The seed's world and every model's annotated answers, into out (small: tens of kilobytes)."""
    out.mkdir(parents=True, exist_ok=True)
    (world, annotated), (kept_world, kept) = demo_answers(run_dir), kept_answers(out)
    shutil.copyfile(world, kept_world)
    for model in MODELS:
        shutil.copyfile(annotated[model], kept[model])


def summarise(runs: list[dict]) -> dict:
    """Mean and spread (population standard deviation, min, max) over seeds of every model's ANAH
    score, FactScore and sentence counts; and whether the target order held on every seed."""
    out = {"seeds": [r["seed"] for r in runs], "models": {}}
    for model in MODELS:
        per_seed = [r["results"]["models"][model] for r in runs]
        entry = {}
        for key in ("anah_score", "factscore", "sentences_per_response"):
            values = [p[key] for p in per_seed if p[key] is not None]
            entry[key] = {"mean": statistics.fmean(values) if values else None,
                          "std": statistics.pstdev(values) if len(values) > 1 else 0.0 if values else None,
                          "min": min(values, default=None), "max": max(values, default=None),
                          "per_seed": [p[key] for p in per_seed]}
        entry["labels_per_seed"] = [r["labels"][model] for r in runs]
        if all("by_exposure" in r for r in runs):
            total: dict = {}
            for r in runs:
                for level, counts in r["by_exposure"][model].items():
                    for label, n in counts.items():
                        total.setdefault(level, {}).setdefault(label, 0)
                        total[level][label] += n
            entry["labels_by_exposure"] = total
        out["models"][model] = entry
    scores = [[r["results"]["models"][m]["anah_score"] for m in ("mask_dpo", "dpo", "base")] for r in runs]
    out["mask_dpo_above_dpo_above_base_on_every_seed"] = all(m > d > b for m, d, b in scores)
    out["mask_dpo_at_least_dpo_at_least_base_on_every_seed"] = all(m >= d >= b for m, d, b in scores)
    out["mask_dpo_above_dpo_on_every_seed"] = all(m > d for m, d, _ in scores)
    out["seconds_per_seed"] = [r["seconds"] for r in runs]
    return out


def markdown(summary: dict, quick: bool) -> str:
    lines = [f"# Factuality world{' (--quick)' if quick else ''}: seeds {summary['seeds']}", "",
             "ANAH score on unseen test topics (greedy answers, oracle annotator), mean ± std over seeds [min, max];",
             "FactScore against the knowledge file; sentences per response; label counts per seed.", "",
             "| model | ANAH score | per seed | FactScore | sentences/response | labels per seed |",
             "|---|---|---|---|---|---|"]
    for model, e in summary["models"].items():
        a, f, s = e["anah_score"], e["factscore"], e["sentences_per_response"]
        fs = "n/a" if f["mean"] is None else f"{f['mean']:.2f} ± {f['std']:.2f}"
        lines.append(f"| {model} | {a['mean']:.2f} ± {a['std']:.2f} [{a['min']:.1f}, {a['max']:.1f}] | "
                     f"{', '.join(f'{v:.1f}' for v in a['per_seed'])} | {fs} | {s['mean']:.2f} | "
                     f"{'; '.join(json.dumps(c, sort_keys=True) for c in e['labels_per_seed'])} |")
    exposures = sorted({level for e in summary["models"].values() for level in e.get("labels_by_exposure", {})},
                       key=int, reverse=True)
    if exposures:
        lines += ["", "Sentences but the opening, summed over seeds, by how often the base policy's corpus showed "
                      "the person: ok / contradictory / unverifiable / nofact (hedged).", "",
                  "| model | " + " | ".join(f"seen {level} times" for level in exposures) + " |",
                  "|---|" + "---|" * len(exposures)]
        for model, e in summary["models"].items():
            cells = [e["labels_by_exposure"].get(level, {}) for level in exposures]
            lines.append(f"| {model} | " + " | ".join(
                " / ".join(str(c.get(k, 0)) for k in ("ok", "contradictory", "unverifiable", "nofact")) for c in cells) + " |")
    lines += ["", f"Mask-DPO > DPO > base on every seed: {summary['mask_dpo_above_dpo_above_base_on_every_seed']}; "
                  f"Mask-DPO >= DPO >= base on every seed: {summary['mask_dpo_at_least_dpo_at_least_base_on_every_seed']}; "
                  f"Mask-DPO > DPO on every seed: {summary['mask_dpo_above_dpo_on_every_seed']}.",
              f"Wall time per seed (s): {', '.join(f'{t:.0f}' for t in summary['seconds_per_seed'])}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--lr", type=float, default=None, help="the demo's --lr (default: the demo's)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None, help="where the demos run (default: a temporary folder)")
    args = parser.parse_args(argv)
    name = "factuality-world" + ("-quick" if args.quick else "") + (f"-lr{args.lr:g}" if args.lr is not None else "")
    out = args.out or RESULTS / f"{dt.date.today().isoformat()}-cpu" / name
    work = args.work or Path(tempfile.mkdtemp(prefix="factuality-"))
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in args.seeds:
        run_dir = work / f"seed-{seed}"
        started = time.perf_counter()
        command = [sys.executable, "-m", "maskdpo.cli", "demo", "factuality", "--output", str(run_dir),
                   "--seed", str(seed), *(["--quick"] if args.quick else []),
                   *(["--lr", str(args.lr)] if args.lr is not None else [])]
        done = subprocess.run(command, env={**os.environ, "TRITON_INTERPRET": "0"})
        seconds = time.perf_counter() - started
        if done.returncode:
            print(f"seed {seed}: the demo failed (exit {done.returncode})", file=sys.stderr)
            return done.returncode
        results = json.loads((run_dir / "results.json").read_text())
        shutil.copyfile(run_dir / "results.json", out / f"results-seed-{seed}.json")
        shutil.copyfile(run_dir / "training.png", out / f"training-seed-{seed}.png")
        keep_answers(run_dir, out / f"seed-{seed}")
        runs.append({"seed": seed, "seconds": seconds, "results": results,
                     "labels": {m: label_counts(run_dir / m / "annotated.jsonl") for m in MODELS},
                     "by_exposure": labels_by_exposure(*demo_answers(run_dir))})
        print(f"seed {seed}: {seconds:.0f} s")
    summary = summarise(runs)
    summary["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summary, args.quick))
    print(markdown(summary, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
