"""gpu_check's reading of its steps' result files into headline figures, and its summary.md.

Each reader takes the results folder and returns a JSON-able dict; a missing or malformed file
raises (the step is then reported as failed with that reason).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path


def kernel_tests(out_dir: Path) -> dict:
    """Counts from pytest's JUnit XML (kernel-tests.xml), and the first failing tests by name."""
    root = ET.parse(out_dir / "kernel-tests.xml").getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {key: sum(int(suite.get(key, 0)) for suite in suites) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failing = [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
               if case.find("failure") is not None or case.find("error") is not None]
    return {**counts, "failing": failing[:10]}


def _total_ms(rows: list[dict], provider: str) -> float | None:
    """fwd+bwd ms of `provider` summed over the logits kinds, or None if any of them failed or is absent."""
    mine = [r for r in rows if r["provider"] == provider]
    if not mine or any("error" in r for r in mine):
        return None
    return sum(r["fwd_bwd_ms"] for r in mine)


def kernel_bench(out_dir: Path) -> dict:
    """From sequence_logps.json: each kernel provider's fraction of both floors, and per N the fastest
    launch variant (fwd+bwd summed over flat and peaked logits; among maskdpo[<variant>], or the
    default `maskdpo` when the kernel lists no variants) with its speed-up over Liger and eager."""
    report = json.loads((out_dir / "sequence_logps.json").read_text())
    rows = report["rows"]
    kernel = [{key: r[key] for key in ("n", "logits", "provider", "fwd_bwd_ms", "fraction_of_3pass_floor",
                                       "fraction_of_moved_floor")}
              for r in rows if r["provider"].startswith("maskdpo") and "error" not in r]
    errors = {f"{r['provider']} N={r['n']} {r['logits']}": r["error"] for r in rows if "error" in r}
    best = {}
    for n in sorted({r["n"] for r in rows}):
        at_n = [r for r in rows if r["n"] == n]
        names = sorted({r["provider"] for r in at_n})
        candidates = [name for name in names if name.startswith("maskdpo[")] or ["maskdpo"]
        totals = {name: ms for name in candidates if (ms := _total_ms(at_n, name)) is not None}
        if not totals:
            continue
        name = min(totals, key=totals.get)
        peers = {peer: _total_ms(at_n, peer) for peer in ("liger", "eager")}
        best[str(n)] = {"provider": name, "fwd_bwd_ms_flat_plus_peaked": totals[name],
                        **{f"speedup_vs_{peer}": ms / totals[name] if ms else None for peer, ms in peers.items()}}
    return {"copy_bandwidth_tbs": report["copy_bandwidth_bytes_per_s"] / 1e12, "kernel": kernel, "best_variant": best,
            "errors": errors}


def fused_bench(out_dir: Path) -> dict:
    """From linear_sequence_logps.json: per N, each provider's time and extra memory, and the fused
    head against Liger's LigerFusedLinearDPOLoss (speed-up = Liger's time / ours)."""
    rows = json.loads((out_dir / "linear_sequence_logps.json").read_text())["rows"]
    by_n, versus = {}, {}
    for r in rows:
        if r["provider"].startswith("F.linear"):
            continue  # the yardstick, not a provider
        keep = ("error",) if "error" in r else ("fwd_bwd_ms", "extra_peak_gib")
        by_n.setdefault(str(r["n"]), {})[r["provider"]] = {key: r[key] for key in keep}
    for n, providers in by_n.items():
        ours, liger = providers.get("maskdpo-fused", {}), providers.get("liger-dpo", {})
        if "fwd_bwd_ms" in ours and "fwd_bwd_ms" in liger:
            versus[n] = {"speedup": liger["fwd_bwd_ms"] / ours["fwd_bwd_ms"], "fused_extra_peak_gib": ours["extra_peak_gib"],
                         "liger_extra_peak_gib": liger["extra_peak_gib"]}
    return {"by_n": by_n, "fused_vs_liger_dpo": versus}


def train(out_dir: Path) -> dict:
    """From train.json: per shape and head, MFU, tokens/s, step time and peak memory (or the error)."""
    rows = json.loads((out_dir / "train.json").read_text())["rows"]
    keys = ("mfu", "tokens_per_s", "step_s", "peak_memory_gib")
    return {"heads": {f"{r['shape']}/{r['head']}": {key: r[key] for key in (("error",) if "error" in r else keys)}
                      for r in rows}}


def _num(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def markdown(summary: dict) -> str:
    env, steps = summary["environment"], summary["steps"]
    lines = [f"# GPU check, {env['gpu']}", "",
             f"{env['date']}, commit {env['commit']}; driver {env['driver']}, CUDA {env['cuda']}, torch {env['torch']}, "
             f"triton {env['triton']}, liger-kernel {env['liger_kernel']}, python {env['python']}. "
             f"Budget {summary['budget_s']:.0f} s.", "",
             "| step | status | seconds | timeout s | note |", "|---|---|---|---|---|"]
    for s in steps:
        note = (s.get("error") or "").strip().splitlines()[-1:] or [""]
        lines.append(f"| {s['name']} | {s['status']} | {_num(s.get('seconds'), '.0f')} | {_num(s.get('timeout_s'), '.0f')} "
                     f"| {note[0].replace('|', '/')[:160]} |")
    results = {s["name"]: s.get("results") or {} for s in steps}
    tests = results.get("kernel-tests")
    if tests:
        lines += ["", "## Kernel tests on CUDA (no interpreter)", "",
                  f"{tests['passed']} passed, {tests['failures']} failed, {tests['errors']} errors, "
                  f"{tests['skipped']} skipped of {tests['tests']}."]
        lines += [f"- failing: `{name}`" for name in tests["failing"]]
    kernel = results.get("kernel-bench")
    if kernel:
        lines += ["", f"## Kernel, sequence_logps (copy bandwidth {kernel['copy_bandwidth_tbs']:.2f} TB/s)", "",
                  "| N | logits | provider | fwd+bwd ms | of 3-pass floor | of moved-bytes floor |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['n']} | {r['logits']} | {r['provider']} | {r['fwd_bwd_ms']:.3f} | "
                  f"{r['fraction_of_3pass_floor']:.2f} | {r['fraction_of_moved_floor']:.2f} |" for r in kernel["kernel"]]
        lines.append("")
        for n, b in kernel["best_variant"].items():
            lines.append(f"- best variant at N = {n}: {b['provider']}, {_num(b['speedup_vs_liger'], '.2f')}x Liger, "
                         f"{_num(b['speedup_vs_eager'], '.2f')}x eager (fwd+bwd, flat + peaked)")
        lines += [f"- {name}: {error}" for name, error in kernel["errors"].items()]
    fused = results.get("fused-bench")
    if fused:
        lines += ["", "## Fused head, Mask-DPO loss from hidden states", "",
                  "| N | provider | fwd+bwd ms | extra peak GiB |", "|---|---|---|---|"]
        for n, providers in fused["by_n"].items():
            for name, r in providers.items():
                if "error" in r:
                    lines.append(f"| {n} | {name} | {r['error']} | |")
                else:
                    lines.append(f"| {n} | {name} | {r['fwd_bwd_ms']:.2f} | {r['extra_peak_gib']:.2f} |")
        lines.append("")
        for n, v in fused["fused_vs_liger_dpo"].items():
            lines.append(f"- N = {n}: maskdpo-fused {v['speedup']:.2f}x faster than LigerFusedLinearDPOLoss; extra "
                         f"memory {v['fused_extra_peak_gib']:.2f} GiB vs {v['liger_extra_peak_gib']:.2f} GiB")
    trained = results.get("train")
    if trained:
        lines += ["", "## Training throughput", "", "| shape/head | MFU | tokens/s | step s | peak GiB |",
                  "|---|---|---|---|---|"]
        for name, r in trained["heads"].items():
            if "error" in r:
                lines.append(f"| {name} | {r['error']} | | | |")
            else:
                lines.append(f"| {name} | {_num(r['mfu'], '.1%')} | {r['tokens_per_s']:.0f} | {r['step_s']:.3f} | "
                             f"{r['peak_memory_gib']:.1f} |")
    failed = [s for s in steps if s["status"] == "failed" and s.get("error")]
    if failed:
        lines += ["", "## Errors"]
        for s in failed:
            lines += ["", f"{s['name']} (log: {s['log']}):", "", "```", s["error"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def headline(steps: list[dict]) -> dict:
    """The figures a closing note quotes, from the steps that produced results."""
    results = {s["name"]: s.get("results") or {} for s in steps}
    out = {}
    if results.get("kernel-tests"):
        out["kernel_tests"] = {key: results["kernel-tests"][key] for key in ("passed", "failures", "errors", "skipped")}
    if results.get("kernel-bench"):
        kernel = results["kernel-bench"]
        out["kernel_fraction_of_floor"] = {
            f"{r['provider']} N={r['n']} {r['logits']}": {"3-pass": r["fraction_of_3pass_floor"],
                                                          "moved-bytes": r["fraction_of_moved_floor"]}
            for r in kernel["kernel"]}
        out["best_variant"] = kernel["best_variant"]
    if results.get("fused-bench"):
        out["fused_vs_liger_dpo"] = results["fused-bench"]["fused_vs_liger_dpo"]
    if results.get("train"):
        out["mfu"] = {name: r.get("mfu") for name, r in results["train"]["heads"].items()}
    return out
