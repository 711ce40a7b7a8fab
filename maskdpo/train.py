"""`maskdpo train`: Mask-DPO through the DeepSpeed pipeline, one entry point for every launcher.

    maskdpo train --config launch/configs/tiny-cpu.yaml                 # CPU: starts its own processes
    deepspeed --num_gpus 8 --module --no_local_rank maskdpo.train --config launch/configs/llama3.1-8b-paper.yaml
    torchrun --nproc_per_node 8 -m maskdpo.train --config ... --optim.lr 5e-6

Encodes and packs the pairs (cached), computes the reference log-probs with the starting model
(cached), trains with a progress bar on rank 0, writes metrics.jsonl (and TensorBoard events when
tensorboard is installed), checkpoints every K steps and at the end (atomically, keeping the last
M), resumes from the latest checkpoint when rerun into the same run directory, saves and exits on
SIGINT/SIGTERM, stops on a non-finite loss naming the pairs, and exports the policy to RUN_DIR/hf.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .config import ConfigError, load_config, save_config

CHECKPOINTS = "checkpoints"
LATEST = "latest"


def _split_argv(argv: list[str]):
    config_path, overrides, resume = None, [], False
    i = 0
    while i < len(argv):
        if argv[i] == "--config" and i + 1 < len(argv):
            config_path, i = argv[i + 1], i + 2
        elif argv[i].startswith("--config="):
            config_path, i = argv[i].split("=", 1)[1], i + 1
        elif argv[i] == "--resume":
            resume, i = True, i + 1
        elif argv[i].startswith("--local_rank"):  # the deepspeed launcher's; LOCAL_RANK is read from the env
            i += 1 if "=" in argv[i] else 2
        elif argv[i] in ("-h", "--help"):
            print(__doc__)
            print("Options: --config FILE, --resume, and --section.key VALUE for any config field "
                  "(see `maskdpo train --help-config`).")
            raise SystemExit(0)
        elif argv[i] == "--help-config":
            _print_config_help()
            raise SystemExit(0)
        else:
            overrides.append(argv[i])
            i += 1
    return config_path, overrides, resume


def _print_config_help() -> None:
    import dataclasses

    from .config import Config, field_docs

    for section in dataclasses.fields(Config):
        kind = section.default_factory
        docs = field_docs(kind)
        print(f"{section.name}:")
        for f in dataclasses.fields(kind):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            print(f"  {f.name}: {default!r}\n      {docs.get(f.name, '')}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config_path, overrides, _ = _split_argv(argv)
        config = load_config(config_path, overrides)
        launched = "RANK" in os.environ
        world = int(os.environ.get("WORLD_SIZE", "1")) if launched else (config.parallel.processes or 1)
        config.validate(world)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if not launched and world > 1:
        return _launch_local(world, argv)
    return Run(config).execute()


def _launch_local(world: int, argv: list[str]) -> int:
    """CPU (or a quick try): start `world` processes ourselves, with gloo; the user needs no launcher.

    SIGINT/SIGTERM are passed to every worker, which saves a checkpoint and stops at the end of its
    step. If a worker fails, the others are stopped rather than left waiting in a collective.
    """
    port = str(_free_port())
    workers = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        workers.append(subprocess.Popen([sys.executable, "-m", "maskdpo.train", *argv], env=env))

    def forward(signum, frame):
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    while any(w.poll() is None for w in workers):
        if any(w.poll() not in (None, 0) for w in workers):
            time.sleep(5)  # let the others report, then stop them
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
            break
        time.sleep(0.2)
    return max(abs(w.wait()) for w in workers)


class NonFiniteLoss(RuntimeError):
    pass


class Run:
    """One process's part of a training run."""

    def __init__(self, config):
        self.config = config
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.run_dir = Path(config.logging.run_dir)
        self.stop_requested = False

    def say(self, message: str) -> None:
        if self.rank == 0:
            from tqdm import tqdm

            tqdm.write(message)

    def execute(self) -> int:
        import torch
        import torch.distributed as dist

        self._quiet_logs()
        self._init_distributed()
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.run_dir / "config.yaml")
        model_path = self._model_path()
        encoded, packing, tokenizer = self._data()
        trainer = self._trainer(model_path, packing)
        reference = self._reference(trainer, model_path, encoded, packing)
        try:
            finished = self._loop(trainer, packing, encoded, reference)
            status = 0
        except NonFiniteLoss as e:
            self.say(f"error: {e}")
            finished, status = False, 1
        if finished:
            trainer.export_hf(self.run_dir / "hf", dtype=torch.bfloat16 if self.config.parallel.bf16 else None)
            if self.rank == 0:
                tokenizer.save_pretrained(str(self.run_dir / "hf"))
                from .plot import plot_run

                try:
                    self.say(f"plot: {plot_run(self.run_dir)}")
                except ImportError:
                    self.say("warning: matplotlib is not installed; no plot written")
            self.say(f"exported the policy to {self.run_dir / 'hf'}")
        dist.barrier()
        dist.destroy_process_group()
        return status

    # --- setup ---------------------------------------------------------------------------------

    @staticmethod
    def _quiet_logs() -> None:
        """One clear line per warning from rank 0, not DeepSpeed's info logs from every rank."""
        import logging
        import warnings

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        logging.getLogger("deepspeed").setLevel(logging.WARNING)
        warnings.simplefilter("once")
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # libraries' notices, not ours

    def _init_distributed(self) -> None:
        import deepspeed
        import torch

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)

    def _model_path(self) -> Path:
        """The starting checkpoint; a random init is written once to RUN_DIR/init (rank 0)."""
        import torch
        import torch.distributed as dist

        if self.config.model.path is not None:
            return Path(self.config.model.path)
        path = self.run_dir / "init"
        if self.rank == 0 and not (path / "config.json").exists():
            from .model.hf import save_llama
            from .model.llama import Llama, LlamaConfig

            torch.manual_seed(self.config.train.seed)
            save_llama(Llama(LlamaConfig(**self.config.model.architecture)), path)
            self.say(f"random-initialised model written to {path}")
        dist.barrier()
        return path

    def _data(self):
        import torch.distributed as dist

        from .data import LabelMap, encode_file, load_tokenizer, pack_pairs, pair_to_json
        from .data.bundled import bundled_pairs
        from .data.jsonl import write_jsonl

        d = self.config.data
        pairs_path = Path(d.pairs)
        if d.pairs == "bundled":
            pairs_path = self.run_dir / "bundled-pairs.jsonl"
            if self.rank == 0:
                write_jsonl(pairs_path, (pair_to_json(p) for p in bundled_pairs()))
        tokenizer_path = d.tokenizer
        model_path = self.config.model.path
        if tokenizer_path is None and model_path and (Path(model_path) / "tokenizer.json").exists():
            tokenizer_path = model_path
        options = dict(max_length=d.max_length, count_eot=d.count_eot, strict=not d.skip_invalid,
                       label_map=LabelMap.from_lists(d.correct_labels, d.hallucinated_labels), cache_dir=d.cache_dir)
        # Rank 0 encodes (and caches); the others then read the cache.
        if self.rank == 0:
            encoded = encode_file(pairs_path, tokenizer_path, progress=True, **options)
        dist.barrier()
        if self.rank != 0:
            encoded = encode_file(pairs_path, tokenizer_path, **options)
        for line in encoded.summary_lines():
            self.say(line)
        tokenizer = load_tokenizer(tokenizer_path)
        packing = pack_pairs(encoded.pairs, d.token_budget, tokenizer.pad_token_id or 0,
                             self.config.train.micro_batch_pairs)
        self.say(f"packed {len(encoded.pairs)} pairs into {len(packing.micro_batches)} micro-batches of "
                 f"{d.token_budget} tokens ({packing.efficiency:.1%} of token slots used)")
        return encoded, packing, tokenizer

    def _schedule(self, total_steps: int):
        o = self.config.optim
        warmup = int(o.warmup_ratio * total_steps)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            if o.schedule == "constant":
                return 1.0
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return factor

    def _trainer(self, model_path: Path, packing):
        import json as _json

        import torch

        from .engine import PipelineTrainer
        from .model.attention import resolve_backend
        from .model.hf import load_config as load_model_config

        c = self.config
        dp = c.data_parallel(self.world)
        self.per_step = c.accumulation_steps(self.world) * dp
        self.steps_per_epoch = len(packing.micro_batches) // self.per_step
        if self.steps_per_epoch == 0:
            raise SystemExit(f"error: {len(packing.micro_batches)} micro-batches cannot fill one step of "
                             f"{self.per_step}; lower train.batch_pairs or data.token_budget")
        self.total_steps = c.train.max_steps or c.train.epochs * self.steps_per_epoch
        dropped = len(packing.micro_batches) - self.steps_per_epoch * self.per_step
        if dropped:
            self.say(f"warning: {dropped} micro-batches per epoch do not fill a step and are left out "
                     "(a different set each epoch)")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        factor = self._schedule(self.total_steps)
        return PipelineTrainer(
            load_model_config(model_path), pipeline_stages=c.parallel.pipeline_stages,
            gradient_accumulation_steps=c.accumulation_steps(self.world),
            optimizer_factory=lambda params: torch.optim.AdamW(params, lr=c.optim.lr, betas=tuple(c.optim.betas),
                                                               weight_decay=c.optim.weight_decay),
            lr_scheduler_factory=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor),
            hf_path=model_path, zero_stage=c.parallel.zero_stage, bf16=c.parallel.bf16,
            gradient_clipping=c.optim.gradient_clipping, beta=c.loss.beta, loss_type=c.loss.type,
            label_smoothing=c.loss.label_smoothing, attention_backend=resolve_backend(c.model.attention, device),
            activation_checkpointing=c.parallel.activation_checkpointing, partition_method=c.parallel.partition,
            seed=c.train.seed, fused_head=c.model.fused_head,
            deepspeed_overrides=_json.loads(Path(c.parallel.deepspeed_config).read_text())
            if c.parallel.deepspeed_config else None,
        )

    def _reference(self, trainer, model_path: Path, encoded, packing):
        import torch.distributed as dist

        from .reference import load_reference, reference_key, save_reference

        key = reference_key(model_path, encoded.key, self.config.data.token_budget, packing.max_pairs,
                            len(encoded.pairs), extra={"bf16": self.config.parallel.bf16,
                                                       "attention": trainer.attention_backend})
        # Rank 0 decides and shares the table: ranks that disagreed (a cache directory that is not
        # shared across nodes) would enter different collectives and hang.
        shared = [load_reference(self.config.data.cache_dir, key) if self.rank == 0 else None]
        dist.broadcast_object_list(shared, src=0)
        table = shared[0]
        if table is not None:
            self.say("reference log-probs: loaded from cache")
            return table
        start = time.perf_counter()
        table = trainer.reference_logps(packing.micro_batches, len(encoded.pairs))
        if self.rank == 0:
            save_reference(self.config.data.cache_dir, key, table)
        self.say(f"reference log-probs: computed in {time.perf_counter() - start:.1f}s")
        return table

    # --- the loop --------------------------------------------------------------------------------

    def _batch(self, packing, step: int):
        """The micro-batches of step `step` (0-based): a reproducible order per epoch."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = list(range(len(packing.micro_batches)))
        random.Random(self.config.train.seed * 1_000_003 + epoch).shuffle(order)
        chosen = order[position * self.per_step:(position + 1) * self.per_step]
        return epoch, [packing.micro_batches[i] for i in chosen]

    def _resume(self, trainer) -> int:
        latest = self.run_dir / CHECKPOINTS / LATEST
        if not latest.exists():
            return 0
        tag = latest.read_text().strip()
        state = trainer.load_checkpoint(self.run_dir / CHECKPOINTS, tag)
        step = int(state["step"])
        self.say(f"resumed from {self.run_dir / CHECKPOINTS / tag} (step {step})")
        if self.rank == 0:  # steps after the checkpoint will be redone: drop their records
            metrics = self.run_dir / "metrics.jsonl"
            if metrics.exists():
                kept = [line for line in metrics.read_text().splitlines() if line and json.loads(line)["step"] <= step]
                metrics.write_text("".join(line + "\n" for line in kept))
        return step

    def _checkpoint(self, trainer, step: int) -> None:
        """Save, then point `latest` at it (atomic rename), then delete checkpoints beyond keep_last:
        a crash mid-save leaves `latest` on the previous complete checkpoint."""
        import torch.distributed as dist

        directory = self.run_dir / CHECKPOINTS
        tag = f"step-{step:08d}"
        trainer.save_checkpoint(directory, tag, client_state={"step": step}, save_latest=False)
        dist.barrier()
        if self.rank == 0:
            tmp = directory / (LATEST + ".tmp")
            tmp.write_text(tag)
            os.replace(tmp, directory / LATEST)
            tags = sorted(p.name for p in directory.iterdir() if p.is_dir() and p.name.startswith("step-"))
            for old in tags[:-self.config.checkpoint.keep_last]:
                shutil.rmtree(directory / old, ignore_errors=True)
        dist.barrier()

    def _loop(self, trainer, packing, encoded, reference) -> int:
        import torch
        import torch.distributed as dist
        from tqdm import tqdm

        from .engine import collective_device

        step = self._resume(trainer)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._request_stop)
        writer = self._tensorboard()
        metrics_file = open(self.run_dir / "metrics.jsonl", "a") if self.rank == 0 else None
        bar = tqdm(total=self.total_steps, initial=step, unit="step", disable=self.rank != 0, dynamic_ncols=True)
        pair_ids = [p.pair_id for p in encoded.pairs]
        start_time = time.perf_counter()
        try:
            while step < self.total_steps:
                epoch, batch = self._batch(packing, step)
                started = time.perf_counter()
                metrics = trainer.train_step(batch, reference)
                seconds = time.perf_counter() - started
                if metrics["nonfinite_pairs"] or not math.isfinite(metrics["loss"]):
                    bad = [pair_ids[i] for i in metrics["nonfinite_pairs"]]
                    latest = self.run_dir / CHECKPOINTS / LATEST
                    good = self.run_dir / CHECKPOINTS / latest.read_text().strip() if latest.exists() else None
                    raise NonFiniteLoss(f"non-finite loss at step {step + 1} in the micro-batch of pairs "
                                        f"{bad[:20]}; last good checkpoint: {good or 'none yet'}")
                step += 1
                tokens = sum(mb.tokens for mb in batch)
                record = {"step": step, "epoch": epoch, **{k: v for k, v in metrics.items() if k != "nonfinite_pairs"},
                          "lr": trainer.engine.get_lr()[0], "tokens": tokens, "tokens_per_s": tokens / seconds,
                          "seconds": seconds}
                if metrics_file:
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                if writer:
                    for key in ("loss", "rewards/accuracy", "rewards/margin", "rewards/chosen", "rewards/rejected", "lr"):
                        writer.add_scalar(key, record[key], step)
                bar.set_postfix(epoch=epoch, loss=f"{record['loss']:.4f}", acc=f"{record['rewards/accuracy']:.2f}",
                                margin=f"{record['rewards/margin']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                bar.update(1)
                stop = torch.tensor([float(self.stop_requested)], device=collective_device())
                dist.all_reduce(stop)  # every rank stops at the same step
                if step % self.config.checkpoint.every == 0 or step == self.total_steps or stop.item():
                    self._checkpoint(trainer, step)
                if stop.item():
                    self.say(f"stopped by signal after step {step}; checkpoint saved, rerun to resume")
                    return False
        finally:
            bar.close()
            if metrics_file:
                metrics_file.close()
            if writer:
                writer.close()
        self.say(f"trained {step} steps in {time.perf_counter() - start_time:.0f}s")
        return True

    def _request_stop(self, signum, frame) -> None:
        self.stop_requested = True

    def _tensorboard(self):
        if self.rank != 0 or not self.config.logging.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))


if __name__ == "__main__":
    sys.exit(main())
