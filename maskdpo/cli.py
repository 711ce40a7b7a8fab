"""The `maskdpo` command line."""

from __future__ import annotations

import argparse
import os
import sys

from maskdpo.data.cli import add_data_commands
from maskdpo.data.cli import run as run_data_command
from maskdpo.loop.cli import add_loop_commands
from maskdpo.loop.cli import run as run_loop_command
from maskdpo.plan.cli import add_plan_command


def _kernel_demo(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available():
        # Must precede the first import of the kernels: @triton.jit reads it when a kernel is defined.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from maskdpo.demo import run_kernel_demo

    return run_kernel_demo(vocab=args.vocab, seed=args.seed)


def _train(argv: list[str]) -> int:
    from maskdpo.train.cli import main as train_main

    return train_main(argv)


def _plot(args: argparse.Namespace) -> int:
    from maskdpo.train.plot import plot_run

    try:
        print(plot_run(args.run_dir))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _export(args: argparse.Namespace) -> int:
    from maskdpo.train.export import export_checkpoint

    try:
        out = export_checkpoint(args.run_dir, args.output, args.checkpoint)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {out}")
    return 0


def _shows_default(default, optional: bool) -> bool:
    return optional and not (default is None or default is False or default is True or default is argparse.SUPPRESS)


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it already names one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or "default)" in text or not _shows_default(action.default, bool(action.option_strings)):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """The parser of `maskdpo` and of each of its commands (sub-commands inherit the class)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        # argparse prints no help line for an option without help, not even its default
        optional = bool(args) and args[0].startswith("-")
        if not kwargs.get("help") and _shows_default(kwargs.get("default"), optional):
            kwargs["help"] = "(default: %(default)s)"
        return super().add_argument(*args, **kwargs)


def _factuality_demo(args: argparse.Namespace) -> int:
    from maskdpo.demos.factuality.run import run_demo

    try:
        run_demo(args.output, main, seed=args.seed, quick=args.quick, **({"lr": args.lr} if args.lr is not None else {}))
    except RuntimeError as e:  # a step failed (it said why above) or gave nothing to go on
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="maskdpo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    demo = sub.add_parser("kernel-demo", help="run the fused sequence-logps kernel on a worked Mask-DPO example")
    demo.add_argument("--vocab", type=int, default=32000, help="vocabulary size of the random logits")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.set_defaults(func=_kernel_demo)
    demos = sub.add_parser("demo", help="the method end to end in a world made in code (maskdpo demo factuality)")
    demo_sub = demos.add_subparsers(dest="demo", required=True, parser_class=Parser)
    factuality = demo_sub.add_parser("factuality", help="base vs plain DPO vs Mask-DPO on unseen topics of a world "
                                                        "made in code: all local, no downloads")
    factuality.add_argument("--output", required=True, help="directory for the world, models, runs and results")
    factuality.add_argument("--seed", type=int, default=0, help="the world's and the runs' seed")
    factuality.add_argument("--quick", action="store_true", help="a small world and short runs (a test, minutes)")
    factuality.add_argument("--lr", type=float, default=None, help="the preference runs' learning rate (both runs; "
                                                                   "default: maskdpo.demos.factuality.run.LR, 2e-5)")
    factuality.set_defaults(func=_factuality_demo)
    add_data_commands(sub)
    add_loop_commands(sub)
    # Listed for --help; `main` hands `maskdpo train ...` to maskdpo.train before argparse sees it.
    sub.add_parser("train", help="train Mask-DPO (maskdpo train --config FILE [--section.key VALUE ...])")
    export = sub.add_parser("export", help="write a Hugging Face model from a run's newest intact checkpoint "
                                           "(to continue an unfinished run as a new one: --model.path OUT)")
    export.add_argument("run_dir")
    export.add_argument("-o", "--output", default=None, help="output folder (default RUN_DIR/export-step-N)")
    export.add_argument("--checkpoint", default=None, help="a checkpoint's name, e.g. step-00000300 (default: newest intact)")
    export.set_defaults(func=_export)
    plot = sub.add_parser("plot", help="plot a run's loss, reward accuracy and margin, chosen/rejected rewards and "
                                       "learning rate to RUN_DIR/metrics.png")
    plot.add_argument("run_dir")
    plot.set_defaults(func=_plot)
    add_plan_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # its options are config fields (--optim.lr ...): parsed by maskdpo.train
        return _train(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "data":
        return run_data_command(args)
    if args.command in ("sample", "annotate", "annotate-templates", "evaluate", "prepare"):
        return run_loop_command(args)
    return args.func(args)


def entry() -> None:
    """The console command. An interrupted data-loop command (status 130) has written what finished;
    its requests still in flight are abandoned rather than waited for (each may take minutes to time
    out, with retries): the process ends at once."""
    status = main()
    if status == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(status)


if __name__ == "__main__":
    entry()
