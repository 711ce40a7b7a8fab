"""The `maskdpo` command line."""

from __future__ import annotations

import argparse
import os
import sys

from maskdpo.data.cli import add_data_commands
from maskdpo.data.cli import run as run_data_command


def _kernel_demo(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available():
        # Must precede the first import of the kernels: @triton.jit reads it when a kernel is defined.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from maskdpo.demo import run_kernel_demo

    return run_kernel_demo(vocab=args.vocab, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskdpo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("kernel-demo", help="run the fused sequence-logps kernel on a worked Mask-DPO example")
    demo.add_argument("--vocab", type=int, default=32000, help="vocabulary size of the random logits")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.set_defaults(func=_kernel_demo)
    add_data_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "data":
        return run_data_command(args)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
