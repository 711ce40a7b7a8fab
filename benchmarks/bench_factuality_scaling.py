"""The paper's scaling study (§4) in the factuality world: does Mask-DPO gain more from more topics
or from more questions per topic? From each seed's finished demo (its world, base policy and
annotated on-policy samples), Mask-DPO is trained again on pairs of a share of the train topics
(1/3, 2/3, all; every question of each) and of 1, 2 or 3 questions per topic (all topics), with the
demo's settings, and scored as the demo scores (greedy answers to the unseen test questions, the
oracle, the ANAH score and FactScore). At equal data -- a third of the topics with three questions
each against every topic with one, the same number of questions -- the paper found more topics better.

    python benchmarks/bench_factuality_scaling.py --seeds 0 1 2 [--work DIR] [--out DIR]

A seed whose demo is not in WORK/seed-S runs it first (`maskdpo demo factuality`, as
bench_factuality_demo.py does: give both the same --work to reuse its runs). The all-topics,
all-questions arm is the demo's own Mask-DPO run. Results: OUT/scaling.json and scaling.md
(default benchmarks/results/<date>-cpu/factuality-scaling/), each arm's annotated answers in
OUT/seed-S/<arm>.annotated.jsonl.
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
# (arm, share of the train topics, questions per topic): every arm trains Mask-DPO.
ARMS = (("topics-1/3", 1 / 3, 3), ("topics-2/3", 2 / 3, 3), ("all", 1.0, 3),
        ("questions-1", 1.0, 1), ("questions-2", 1.0, 2))
# The equal-data comparisons: (more topics, more questions per topic), the same number of questions.
EQUAL_DATA = (("topics-1/3", "questions-1"), ("topics-2/3", "questions-2"))
KEYS = ("anah_score", "correct", "incorrect", "sentences_per_response", "factscore")


def arm_dir(arm: str) -> str:
    return arm.replace("/", "-of-")


def run_arms(run_dir: Path, seed: int, say=print) -> dict:
    """arm -> its numbers (model_result's, with the topics, questions and pairs it trained on), for
    one seed's finished demo in `run_dir`; the arms' runs go to run_dir/scaling/."""
    from maskdpo.cli import main as maskdpo
    from maskdpo.demos.factuality.oracle import OracleServer
    from maskdpo.demos.factuality.run import FULL, ORACLE, Commands, evaluate_model, model_result, preference_run, read_jsonl

    demo = json.loads((run_dir / "demo.json").read_text())
    if demo != {"seed": seed, "quick": False, "oracle": ORACLE}:
        raise SystemExit(f"{run_dir}: a demo run with {demo}, not the full demo of seed {seed} with {ORACLE}")
    files = {name: run_dir / "world" / f"{name}.jsonl" for name in ("knowledge", "train_questions", "test_questions")}
    train_questions = read_jsonl(files["train_questions"])
    topics = sorted({q["topic"] for q in train_questions})
    per_topic = len(train_questions) // len(topics)
    base, out, command = run_dir / "base" / "model", run_dir / "scaling", Commands(maskdpo)
    arms = {}
    with OracleServer() as server:
        for arm, share, questions in ARMS:
            n = round(share * len(topics))
            if (n, questions) == (len(topics), per_topic):  # the demo's own Mask-DPO run
                d, pairs = run_dir / "mask_dpo", run_dir / "train" / "pairs.jsonl"
            else:
                d = out / arm_dir(arm)
                d.mkdir(parents=True, exist_ok=True)
                # An arm resumes what it finished; one made with other settings would be scored with
                # its old pairs and answers: refused.
                settings = {"topics": n, "questions_per_topic": questions, "seed": seed,
                            "pairs_per_question": FULL.pairs_per_question, "epochs": FULL.epochs}
                record = d / "arm.json"
                if record.exists() and json.loads(record.read_text()) != settings:
                    raise SystemExit(f"{record}: this arm was run with {record.read_text().strip()}, not "
                                     f"{json.dumps(settings)}: remove {d} to run it again")
                record.write_text(json.dumps(settings) + "\n")
                pairs = d / "pairs.jsonl"
                started = time.time()
                if not pairs.exists():
                    command(["data", "pairs", run_dir / "train" / "annotated.jsonl", "-o", pairs,
                             "--pairs-per-question", FULL.pairs_per_question, "--topics", n,
                             "--questions-per-topic", questions, "--seed", seed])
                hf = preference_run(command, base, pairs, "sentences", d / "run", run_dir / "cache", seed, FULL.epochs)
                evaluate_model(command, arm_dir(arm), hf, out, files, server.url)
                say(f"seed {seed}, {arm}: {n} topics x {questions} questions ({time.time() - started:.0f} s)")
            trained = read_jsonl(pairs)
            arms[arm] = {"topics": n, "questions_per_topic": questions,
                         "questions": len({p["question_id"] for p in trained}), "pairs": len(trained),
                         **{k: v for k, v in model_result(d).items() if k in KEYS}, "annotated": str(d / "annotated.jsonl")}
    return arms


def summarise(per_seed: dict[int, dict]) -> dict:
    """Per arm, the mean and spread over seeds; per equal-data comparison, each seed's ANAH score
    difference (more topics minus more questions) and on how many seeds more topics was higher."""
    seeds = sorted(per_seed)
    out = {"seeds": seeds, "arms": {}, "equal_data": []}
    for arm, _, _ in ARMS:
        rows = [per_seed[s]["arms"][arm] for s in seeds]
        entry = {"questions_per_topic": rows[0]["questions_per_topic"]}
        for key in ("topics", "questions", "pairs", *KEYS):
            values = [r[key] for r in rows if r[key] is not None]
            entry[key] = {"mean": statistics.fmean(values) if values else None,
                          "std": statistics.pstdev(values) if values else None, "per_seed": [r[key] for r in rows]}
        out["arms"][arm] = entry
    for topics_arm, questions_arm in EQUAL_DATA:
        diffs = [per_seed[s]["arms"][topics_arm]["anah_score"] - per_seed[s]["arms"][questions_arm]["anah_score"]
                 for s in seeds]
        out["equal_data"].append({"more_topics": topics_arm, "more_questions": questions_arm,
                                  "anah_difference_per_seed": diffs, "mean": statistics.fmean(diffs),
                                  "more_topics_higher_on": sum(d > 0 for d in diffs), "seeds": len(diffs)})
    out["base_anah_per_seed"] = [per_seed[s]["base_anah"] for s in seeds]
    return out


def markdown(summary: dict) -> str:
    lines = [f"# The scaling study in the factuality world: seeds {summary['seeds']}", "",
             "Mask-DPO trained on a share of the train topics (every question of each) or on fewer questions per "
             "topic (every topic); ANAH score on the unseen test questions, mean ± std over seeds (per seed). "
             f"The base policy: {', '.join(f'{v:.1f}' for v in summary['base_anah_per_seed'])}.", "",
             "| arm | topics | questions/topic | questions with pairs | pairs | ANAH score | per seed | #incorrect | "
             "sentences/response | FactScore |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, e in summary["arms"].items():
        fs = "n/a" if e["factscore"]["mean"] is None else f"{e['factscore']['mean']:.1f}"
        lines.append(f"| {arm} | {e['topics']['mean']:.0f} | {e['questions_per_topic']} | {e['questions']['mean']:.0f} | "
                     f"{e['pairs']['mean']:.0f} | {e['anah_score']['mean']:.2f} ± {e['anah_score']['std']:.2f} | "
                     f"{', '.join(f'{v:.1f}' for v in e['anah_score']['per_seed'])} | {e['incorrect']['mean']:.1f} | "
                     f"{e['sentences_per_response']['mean']:.2f} | {fs} |")
    lines += ["", "At equal data (the same number of questions), more topics minus more questions per topic, ANAH score:", ""]
    for c in summary["equal_data"]:
        lines.append(f"- {c['more_topics']} vs {c['more_questions']}: "
                     f"{', '.join(f'{d:+.1f}' for d in c['anah_difference_per_seed'])} (mean {c['mean']:+.2f}); "
                     f"more topics higher on {c['more_topics_higher_on']} of {c['seeds']} seeds")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None, help="where the demos run (default: a temporary folder)")
    args = parser.parse_args(argv)
    out = args.out or RESULTS / f"{dt.date.today().isoformat()}-cpu" / "factuality-scaling"
    work = args.work or Path(tempfile.mkdtemp(prefix="factuality-"))
    out.mkdir(parents=True, exist_ok=True)
    per_seed = {}
    for seed in args.seeds:
        run_dir = work / f"seed-{seed}"
        started = time.perf_counter()
        if not (run_dir / "results.json").exists():
            done = subprocess.run([sys.executable, "-m", "maskdpo.cli", "demo", "factuality", "--output", str(run_dir),
                                   "--seed", str(seed)], env={**os.environ, "TRITON_INTERPRET": "0"})
            if done.returncode:
                print(f"seed {seed}: the demo failed (exit {done.returncode})", file=sys.stderr)
                return done.returncode
        arms = run_arms(run_dir, seed)
        kept = out / f"seed-{seed}"
        kept.mkdir(parents=True, exist_ok=True)
        for arm, r in arms.items():
            shutil.copyfile(r.pop("annotated"), kept / f"{arm_dir(arm)}.annotated.jsonl")
        base = json.loads((run_dir / "results.json").read_text())["models"]["base"]["anah_score"]
        per_seed[seed] = {"arms": arms, "base_anah": base, "seconds": time.perf_counter() - started}
        print(f"seed {seed}: {per_seed[seed]['seconds']:.0f} s")
    summary = summarise(per_seed)
    summary["per_seed"] = {str(s): v for s, v in per_seed.items()}
    summary["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    (out / "scaling.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "scaling.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
