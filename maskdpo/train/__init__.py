"""Training: configuration, the DeepSpeed pipeline engine, and the run built from small components.

Entry points: `maskdpo train` (maskdpo.train.cli.main) and `python -m maskdpo.train` for launchers.
"""
