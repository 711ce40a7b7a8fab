"""`maskdpo train`: Mask-DPO through the DeepSpeed pipeline, one entry point for every launcher.

    maskdpo train --config launch/configs/tiny-cpu.yaml                 # CPU: starts its own processes
    deepspeed --num_gpus 8 --module --no_local_rank maskdpo.train --config launch/configs/llama3.1-8b-paper.yaml
    torchrun --nproc_per_node 8 -m maskdpo.train --config ... --optim.lr 5e-6

Encodes and packs the pairs (cached), computes the reference log-probs with the starting model
(cached), trains with a progress bar on rank 0, writes metrics.jsonl (and TensorBoard events when
tensorboard is installed), checkpoints every K steps and at the end (atomically, keeping the last
M), resumes from the latest checkpoint when rerun into the same run directory, saves and exits on
SIGINT/SIGTERM, stops on a non-finite loss naming the pairs, and exports the policy to RUN_DIR/hf.
A run directory holding another configuration's checkpoints, or used by another run, is refused
before any process starts.

Exit codes: 0 finished (or already complete), 1 failed, 2 configuration error or refused directory,
3 stopped by SIGINT/SIGTERM with a checkpoint saved (rerun to resume), 4 run directory in use.
"""

from __future__ import annotations

import os
import sys

from .config import ConfigError, load_config
from .exit_codes import EXIT_BUSY, EXIT_CONFIG
from .launcher import die_with_parent, launch_local
from .run_dir import RunRefused, check_run_directory
from .run_lock import ENV as LOCK_ENV
from .run_lock import RunDirectoryBusy, RunLock


def _split_argv(argv: list[str]):
    """(config file, overrides, whether --help-config was asked)."""
    config_path, overrides, help_config = None, [], False
    i = 0
    while i < len(argv):
        if argv[i] == "--config" and i + 1 < len(argv):
            config_path, i = argv[i + 1], i + 2
        elif argv[i].startswith("--config="):
            config_path, i = argv[i].split("=", 1)[1], i + 1
        elif argv[i] == "--resume":
            raise ConfigError("--resume is not needed: rerunning into the same logging.run_dir resumes from its "
                              "latest checkpoint")
        elif argv[i].startswith("--local_rank"):  # the deepspeed launcher's; LOCAL_RANK is read from the env
            i += 1 if "=" in argv[i] else 2
        elif argv[i] in ("-h", "--help"):
            print(__doc__)
            print("Options: --config FILE, and --section.key VALUE for any config field (see `maskdpo train "
                  "--help-config`: every field, its default and its documentation, as YAML; after --config FILE "
                  "and overrides: that configuration). Rerunning into the same logging.run_dir resumes from its "
                  "latest checkpoint.")
            raise SystemExit(0)
        elif argv[i] == "--help-config":
            help_config, i = True, i + 1
        else:
            overrides.append(argv[i])
            i += 1
    return config_path, overrides, help_config


SILENT_RANK_WAIT_S = 30.0


def _let_rank_0_say_it() -> None:
    """A silent rank that found the problem does not exit first: the launcher would stop every other
    rank at once, rank 0 perhaps before it has said the problem (seen: no line at all). It waits for
    the launcher to stop it once rank 0 has exited, or SILENT_RANK_WAIT_S at most."""
    import time

    time.sleep(SILENT_RANK_WAIT_S)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    launched = "RANK" in os.environ
    # Under torchrun or deepspeed every rank finds the same problem: rank 0 says it, once.
    says = os.environ.get("RANK", "0") == "0"
    if launched:
        die_with_parent()
    try:
        config_path, overrides, help_config = _split_argv(argv)
        config = load_config(config_path, overrides)
        if help_config:
            from .config import config_yaml

            print(config_yaml(config), end="")
            return 0
        world = int(os.environ.get("WORLD_SIZE", "1")) if launched else (config.parallel.processes or 1)
        config.validate(world)
        fingerprint = check_run_directory(config, world)
    except ConfigError as e:
        if says:
            print(f"config error: {e}", file=sys.stderr)
        else:
            _let_rank_0_say_it()
        return EXIT_CONFIG
    except RunRefused as e:
        if says:
            print(e, file=sys.stderr if e.code else sys.stdout)
        else:
            _let_rank_0_say_it()
        return e.code
    if config.model.path is not None and config.model.architecture and says:
        print(f"note: model.architecture is ignored: the model is {config.model.path}")
    lock = None
    # The launching process holds the run directory's lock: our CPU launcher, or rank 0 of a
    # torchrun/deepspeed launch (whose other ranks fail with it when it stops).
    if not launched or (os.environ.get("RANK") == "0" and LOCK_ENV not in os.environ):
        try:
            lock = RunLock(config.logging.run_dir).acquire()
        except RunDirectoryBusy as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BUSY
    try:
        if not launched and world > 1:
            return launch_local(world, argv, lock.fd)
        from .trainer import Trainer

        return Trainer(config, fingerprint).run()
    finally:
        if lock is not None:
            lock.release()
