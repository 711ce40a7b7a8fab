"""One process's part of a training run, built from small components (torchtitan's way):

    prepare (starting model, data, reference table) -> StepLoader (which micro-batches make each step)
    -> PipelineTrainer (DeepSpeed engine, objective, optimizer and schedule) -> Checkpointer, MetricsLogger

`Trainer(config).run()` joins the process group, trains, exports, and always leaves the group and
closes its files, whatever the exit.
"""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..data.errors import RecordError
from .checkpointer import Checkpointer, CheckpointWriteError
from .config import Config, save_config
from .distributed import compute_device, destroy_distributed, init_distributed
from .exit_codes import EXIT_CONFIG, EXIT_FAILED, EXIT_FINISHED, EXIT_STOPPED
from .loader import StepLoader
from .metrics import MetricsLogger
from .prepare import prepare_data, quiet_logs, reference_table, starting_model
from .run_dir import mark
from .schedule import lr_scheduler_factory


class NonFiniteLoss(RuntimeError):
    pass


def build_engine(config: Config, model_path: Path, packing, total_steps: int, world: int):
    """The PipelineTrainer a config describes (optimizer, schedule, DeepSpeed template included)."""
    from ..model.hf import load_config as load_model_config
    from .engine import PipelineTrainer

    c = config
    return PipelineTrainer(
        load_model_config(model_path), pipeline_stages=c.parallel.pipeline_stages,
        tensor_parallel=c.parallel.tensor_parallel,
        gradient_accumulation_steps=c.accumulation_steps(world),
        optimizer_factory=lambda params: torch.optim.AdamW(params, lr=c.optim.lr, betas=tuple(c.optim.betas),
                                                           weight_decay=c.optim.weight_decay),
        lr_scheduler_factory=lr_scheduler_factory(total_steps, c.optim.warmup_ratio, c.optim.schedule),
        hf_path=model_path, zero_stage=c.parallel.zero_stage, bf16=c.parallel.bf16,
        gradient_clipping=c.optim.gradient_clipping, beta=c.loss.beta, loss_type=c.loss.type,
        label_smoothing=c.loss.label_smoothing, attention=c.model.attention,
        deterministic_attention=c.model.deterministic_attention,
        activation_checkpointing=c.parallel.activation_checkpointing, partition_method=c.parallel.partition,
        seed=c.train.seed, head=c.model.head, max_seqlen=packing.max_seqlen,
        deepspeed_overrides=json.loads(Path(c.parallel.deepspeed_config).read_text())
        if c.parallel.deepspeed_config else None,
    )


class Trainer:
    """fingerprint: the run's (maskdpo.train.fingerprint), checked against the run directory by the
    command line before any process started; stored with every checkpoint."""

    def __init__(self, config: Config, fingerprint: dict):
        self.config = config
        self.fingerprint = fingerprint
        self.run_dir = Path(config.logging.run_dir)
        self.stop_requested = False
        self.log: MetricsLogger | None = None

    def say(self, message: str) -> None:
        if dist.get_rank() == 0:
            from tqdm import tqdm

            tqdm.write(message)

    def fail(self, message: str, every_rank_knows: bool = True) -> None:
        """One line on standard error: once, by rank 0, for what every rank found alike; else by the
        rank that met it alone."""
        import sys

        from tqdm import tqdm

        rank = dist.get_rank()
        if rank == 0 or not every_rank_knows:
            tqdm.write(f"error: {message}" if rank == 0 else f"error (rank {rank}): {message}", file=sys.stderr)

    def run(self) -> int:
        quiet_logs()
        init_distributed()
        try:
            status = self._run()
            # Ranks leave together: a rank that tears the group down while another is still in a
            # collective aborts that one.
            dist.barrier()
            return status
        except (RecordError, ValueError, KeyError, OSError) as e:
            # Bad data or a bad checkpoint met after start: one line from the rank that met it
            # (the launcher then stops the others), not a traceback from every rank.
            message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            self.fail(message if isinstance(e, RecordError) else f"{type(e).__name__}: {message}",
                      every_rank_knows=False)
            return EXIT_FAILED
        except RuntimeError as e:
            if isinstance(e, dist.DistBackendError) or "closed by peer" in str(e):
                return EXIT_FAILED  # another rank stopped and said why: no second report from this one
            raise
        finally:
            if self.log is not None:
                self.log.close()
            destroy_distributed()

    def _run(self) -> int:
        c, rank, world = self.config, dist.get_rank(), dist.get_world_size()
        if rank == 0:  # the directory was checked: this run starts (or resumes) with this configuration
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(c, self.run_dir / "config.yaml")
            mark(self.run_dir, self.fingerprint, "running")
        model_path = starting_model(c, self.run_dir, self.say)
        data = prepare_data(c, self.run_dir, self.say)
        try:
            loader = StepLoader(data.packing.micro_batches, c.micro_batches_per_step(), c.train.seed)
        except ValueError as e:
            self.say(f"error: {e}")
            return EXIT_CONFIG
        if loader.left_out_per_epoch:
            self.say(f"warning: {loader.left_out_per_epoch} micro-batches per epoch do not fill a step and are left "
                     "out (a different set each epoch)")
        total_steps = c.train.max_steps or c.train.epochs * loader.steps_per_epoch
        engine = build_engine(c, model_path, data.packing, total_steps, world)
        from ..model.pipeline import describe_stages

        layout = engine.layout
        self.say(f"{world} processes: {layout.tensor_parallel} tensor x {layout.pipeline_stages} pipeline x "
                 f"{layout.data_parallel} data-parallel; {describe_stages(engine.module)}")
        bad = engine.nonfinite_parameters()
        if bad:
            self.say(f"error: the starting model {model_path} has non-finite parameters: {', '.join(bad[:5])}")
            return EXIT_FAILED
        reference = reference_table(engine, c, model_path, data, self.say)
        checkpointer = Checkpointer(self.run_dir, c.checkpoint.every, c.checkpoint.keep_last, self.fingerprint)
        try:
            step = checkpointer.resume(engine, self.say)
        except FileNotFoundError as e:
            self.say(f"error: {e}")
            return EXIT_FAILED
        if step:
            self.say(f"resumed from {checkpointer.latest()} (step {step})")
        if rank == 0:  # steps after the checkpoint will be redone: drop their records
            MetricsLogger.trim(self.run_dir, step)
        dist.barrier()
        self.log = MetricsLogger(self.run_dir, rank == 0, c.logging.tensorboard, total_steps, step)
        try:
            summary = self._loop(engine, loader, checkpointer, data.encoded, reference, step, total_steps)
        except NonFiniteLoss as e:
            self.say(f"error: {e}")
            return EXIT_FAILED
        except CheckpointWriteError as e:
            self.fail(str(e), every_rank_knows=e.collective)
            return EXIT_FAILED
        finally:
            self.log.close()
        if summary is None:
            return EXIT_STOPPED
        self.say(summary)  # after the progress bar is closed (MetricsLogger.close), not through it
        self._export(engine, model_path, data.tokenizer_dir)
        if rank == 0:
            mark(self.run_dir, self.fingerprint, "complete", steps=total_steps)
        return EXIT_FINISHED

    def _loop(self, engine, loader: StepLoader, checkpointer: Checkpointer, encoded, reference, step: int,
              total_steps: int) -> str | None:
        previous = {signum: signal.signal(signum, self._request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._steps(engine, loader, checkpointer, encoded, reference, step, total_steps)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _steps(self, engine, loader: StepLoader, checkpointer: Checkpointer, encoded, reference, step: int,
               total_steps: int) -> str | None:
        """Train to total_steps: the line that says so, or None when stopped by a signal."""
        pair_ids = [p.pair_id for p in encoded.pairs]
        start_time = time.perf_counter()
        while step < total_steps:
            batch = loader.step(step)
            lr = engine.learning_rate()  # this step's own rate (the scheduler steps after it)
            started = time.perf_counter()
            metrics = engine.train_step(batch.micro_batches, reference)
            seconds = time.perf_counter() - started
            if metrics["nonfinite_pairs"] or not math.isfinite(metrics["loss"]):
                bad = [pair_ids[i] for i in metrics["nonfinite_pairs"]]
                good = checkpointer.latest()
                raise NonFiniteLoss(f"non-finite loss at step {step + 1} for pairs {bad[:20]}; "
                                    f"last good checkpoint: {good or 'none yet'}")
            step += 1
            record = {"step": step, "epoch": batch.epoch,
                      **{k: v for k, v in metrics.items() if k != "nonfinite_pairs"},
                      "lr": lr, "tokens": batch.tokens, "tokens_per_s": batch.tokens / seconds, "seconds": seconds}
            self.log.log(record)
            stop = torch.tensor([float(self.stop_requested)], device=compute_device())
            dist.all_reduce(stop)  # every rank stops at the same step
            if checkpointer.due(step, total_steps) or stop.item():
                if not engine.parameters_finite():
                    raise NonFiniteLoss(f"the parameters are not finite after step {step} (the update diverged); "
                                        f"not saved; last good checkpoint: {checkpointer.latest() or 'none yet'}")
                checkpointer.save(engine, step)
            if stop.item():
                self.say(f"stopped by signal after step {step}; checkpoint saved, rerun to resume")
                return None
        return f"trained to step {step} in {time.perf_counter() - start_time:.0f}s"

    def _request_stop(self, signum, frame) -> None:
        if not self.stop_requested:
            self.say(f"{signal.Signals(signum).name} received: stopping after this step with a checkpoint")
        self.stop_requested = True

    def _export(self, engine, model_path: Path, tokenizer_dir: Path) -> None:
        hf = self.run_dir / "hf"
        engine.export_hf(hf, dtype=torch.bfloat16 if self.config.parallel.bf16 else None)
        if dist.get_rank() == 0:
            from .serving_files import write_serving_files

            write_serving_files(hf, model_path, tokenizer_dir)
            from .plot import plot_run

            try:
                self.say(f"plot: {plot_run(self.run_dir)}")
            except ImportError:
                self.say("warning: matplotlib is not installed; no plot written")
            except ValueError as e:
                self.say(f"no plot: {e}")
        self.say(f"exported the policy to {hf}")
