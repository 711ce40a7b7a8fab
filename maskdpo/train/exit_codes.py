"""The exit codes of `maskdpo train`, its launcher and its workers: one list, imported by each side
(the launcher reads the workers' codes, the trainer returns them, the CLI refuses runs with them)."""

EXIT_FINISHED = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_STOPPED = 3  # stopped by SIGINT/SIGTERM with a checkpoint saved: rerun to resume
EXIT_BUSY = 4  # the run directory is used by another run
