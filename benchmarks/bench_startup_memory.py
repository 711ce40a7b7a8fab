"""Start-up host memory of a tensor x pipeline parallel run, measured on the CPU (gloo).

A synthetic Hugging Face checkpoint (random fp32 weights, sharded safetensors) of about --gb GB is
written; then `--tensor-parallel` x `--pipeline-stages` processes (torchrun) each build the real
PipelineTrainer from it: every layer made on the meta device and materialised as the rank's own
shard, the checkpoint read tensor by tensor and sliced (maskdpo.model.hf.load_state_dict). Each rank
reports its peak resident memory (ru_maxrss) after the imports and after the engine is built, and the
bytes of the parameters it holds. What a rank must hold is its shard; reading whole safetensors files
(as before) or building the stage unsharded would show as a peak near the checkpoint's size.

Results: benchmarks/results/<date>-cpu/startup-memory.{json,md}.
Usage: python benchmarks/bench_startup_memory.py [--gb 1.2] [--tensor-parallel 2] [--pipeline-stages 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def synthetic_checkpoint(path: Path, gb: float) -> int:
    """A random Llama checkpoint of about `gb` GB (fp32) in 500 MB shards; returns its bytes."""
    import torch
    import transformers

    layers = max(2, int(gb * 1e9 / 4 / 15.7e6) - 4)  # ~15.7M parameters a layer at these widths
    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=4096,
                                      num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=8,
                                      tie_word_embeddings=False, max_position_embeddings=4096)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(str(path), max_shard_size="500MB")
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def worker(args) -> None:
    """One rank: build the trainer from the checkpoint and report memory."""
    import torch
    import torch.distributed as dist

    from maskdpo.model.hf import load_config
    from maskdpo.train.engine import PipelineTrainer

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    trainer = PipelineTrainer(load_config(args.checkpoint), pipeline_stages=args.pipeline_stages,
                              tensor_parallel=args.tensor_parallel, gradient_accumulation_steps=1,
                              optimizer_factory=lambda p: torch.optim.SGD(p, lr=0.0), hf_path=args.checkpoint,
                              zero_stage=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params = sum(p.numel() * p.element_size() for p in trainer.module.parameters())
    # Peak RSS also counts the checkpoint's pages that safetensors mapped and read (file-backed,
    # shared between ranks and reclaimable); RssAnon is the memory the process itself holds.
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    anon = int(status.get("RssAnon", "0 kB").split()[0]) * 1024
    mapped = int(status.get("RssFile", "0 kB").split()[0]) * 1024
    row = {"rank": dist.get_rank(), "stage": trainer.layout.stage, "tp_rank": trainer.layout.tp_rank,
           "parameter_bytes": params, "rss_after_imports": before, "peak_rss": peak, "rss_anon": anon,
           "rss_file": mapped}
    rows = [None] * dist.get_world_size()
    dist.all_gather_object(rows, row)
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps(rows))
    dist.barrier()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=1.2, help="checkpoint size to synthesise (fp32 GB)")
    parser.add_argument("--tensor-parallel", type=int, default=2)
    parser.add_argument("--pipeline-stages", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=None, help="default: results/<date>-cpu/")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    import datetime as dt

    from bench_common import RESULTS

    world = args.tensor_parallel * args.pipeline_stages
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "hf"
        print(f"writing a synthetic checkpoint of about {args.gb} GB ...", file=sys.stderr, flush=True)
        size = synthetic_checkpoint(checkpoint, args.gb)
        print(f"{size / 1e9:.2f} GB written; starting {world} ranks (T={args.tensor_parallel}, "
              f"P={args.pipeline_stages})", file=sys.stderr, flush=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        result_file = Path(tmp) / "rows.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "0"}
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(world),
                        "--master_addr", "127.0.0.1", "--master_port", str(port), __file__, "--worker",
                        "--checkpoint", str(checkpoint), "--out", str(result_file),
                        "--tensor-parallel", str(args.tensor_parallel), "--pipeline-stages", str(args.pipeline_stages)],
                       env=env, check=True)
        rows = json.loads(result_file.read_text())
    out_dir = args.out_dir or RESULTS / f"{dt.date.today().isoformat()}-cpu"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint_bytes": size, "tensor_parallel": args.tensor_parallel,
              "pipeline_stages": args.pipeline_stages, "rows": rows,
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    (out_dir / "startup-memory.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Start-up host memory, T={args.tensor_parallel} x P={args.pipeline_stages} on the CPU", "",
             f"Synthetic fp32 checkpoint of {size / 1e9:.2f} GB (500 MB safetensors shards); each rank builds "
             "PipelineTrainer from it (meta-device layers materialised as the rank's shard, tensors read one at a "
             "time and sliced). Peak RSS is ru_maxrss of the rank's process: it includes the checkpoint pages "
             "safetensors mapped and read (a column slice touches the whole tensor's pages; file-backed, shared "
             "and reclaimable), shown after the build as RssFile; RssAnon is what the process holds.", "",
             "| rank | stage | tensor rank | parameters held (GB) | RSS after imports (GB) | peak RSS (GB) | "
             "peak growth (GB) | growth / checkpoint | RssAnon after (GB) | RssFile after (GB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        growth = r["peak_rss"] - r["rss_after_imports"]
        lines.append(f"| {r['rank']} | {r['stage']} | {r['tp_rank']} | {r['parameter_bytes'] / 1e9:.3f} | "
                     f"{r['rss_after_imports'] / 1e9:.2f} | {r['peak_rss'] / 1e9:.2f} | {growth / 1e9:.2f} | "
                     f"{growth / size:.2f} | {r['rss_anon'] / 1e9:.2f} | {r['rss_file'] / 1e9:.2f} |")
    (out_dir / "startup-memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
