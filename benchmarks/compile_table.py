"""Compile every Triton kernel of maskdpo for real GPU targets on a machine without a GPU, and
tabulate what ptxas made of them: registers, spills, shared memory, blocks per SM.

How: a stub Triton driver reports GPUTarget("cuda", <arch>, 32), and the real launchers
(maskdpo.kernels.sequence_logps.triton_forward / triton_backward) run under
maskdpo.kernels.launch.compile_only() on meta tensors, so each launch compiles exactly the
specialisation it would launch (dtype, alignment and divisibility of every argument, launch
variant) and runs nothing. ptxas -v (the one Triton ships for that architecture) then reports each
cubin's registers, spill bytes and shared memory.

Cases: for each architecture, the production specialisations
  - every launch variant, bf16/fp16/fp32, V = 128256, contiguous rows;
  - the default variant over V = 32000, 128256 and an odd V (32001), with contiguous rows, rows
    strided as a shifted (B, T, V) view, column-strided logits, and the 64-bit column offsets
    (a stride that reaches 2**31 elements), plus fp64 (which may spill: it is the test dtype).

Usage: python benchmarks/compile_table.py [--arch 80 90] [--out-dir DIR] [--quick]
Writes DIR/compile-table.{json,md}; exits 1 when any compile fails or a non-fp64 kernel spills.
Must run without TRITON_INTERPRET (it re-executes itself without it when set).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Specs of the architectures: registers per SM, max threads and blocks per SM, shared memory per
# SM usable by blocks, and the register allocation unit (per warp) — CUDA occupancy calculator data.
ARCHS = {
    80: dict(regs=65536, threads=2048, blocks=32, smem=164 * 1024, reg_unit=256),
    90: dict(regs=65536, threads=2048, blocks=32, smem=228 * 1024, reg_unit=256),
}
BLOCK_SMEM_RESERVED = 1024  # the driver reserves 1 KB of shared memory per block


@dataclass
class Row:
    arch: int
    kernel: str
    dtype: str
    vocab: int
    layout: str
    variant: str
    block_v: int
    num_warps: int
    wide: bool
    align: int
    registers: int
    spill_bytes: int
    shared_bytes: int
    blocks_per_sm: int


def blocks_per_sm(arch: int, registers: int, num_warps: int, shared: int) -> int:
    """Resident blocks per SM, limited by registers (allocated per warp in units), threads, blocks
    and shared memory."""
    spec = ARCHS[arch]
    unit = spec["reg_unit"]
    per_warp = -(-registers * 32 // unit) * unit
    by_regs = spec["regs"] // (per_warp * num_warps)
    by_threads = spec["threads"] // (32 * num_warps)
    by_smem = spec["smem"] // (shared + BLOCK_SMEM_RESERVED)
    return min(by_regs, by_threads, spec["blocks"], by_smem)


def _stub_driver(arch: int):
    """A Triton driver that reports a GPU target and launches nothing (compile_only never does)."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase

    class StubDriver(DriverBase):
        @classmethod
        def is_active(cls):
            return True

        def map_python_to_cpp_type(self, ty):
            return ty

        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_benchmarker(self):
            raise RuntimeError("the stub driver compiles only")

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_device_interface(self):
            return torch.cuda

    return StubDriver()


def ptxas_usage(ptx: str, arch: int) -> tuple[int, int, int]:
    """(registers, spill store bytes, shared bytes) from the ptxas that Triton uses for `arch`."""
    from triton.backends.nvidia.compiler import get_ptxas

    target = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        log = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name={target}", str(src), "-o",
                              str(Path(tmp) / "k.cubin")], capture_output=True, text=True, check=True).stderr
    registers = int(re.search(r"Used (\d+) registers", log).group(1))
    spills = int(re.search(r"(\d+) bytes spill stores", log).group(1))
    smem = re.search(r"(\d+) bytes smem", log)
    return registers, spills, int(smem.group(1)) if smem else 0


def _cases(quick: bool):
    """(dtype, vocab, layout, variant or None) for the table (see the module docstring)."""
    import torch

    from maskdpo.kernels.launch import VARIANTS

    dtypes = [torch.bfloat16, torch.float16, torch.float32]
    for variant in VARIANTS:
        for dtype in dtypes:
            yield dtype, 128256, "contiguous", variant
    if quick:
        return
    for dtype in dtypes:
        for vocab in (32000, 128256, 32001):
            for layout in ("contiguous", "shifted-view", "column-strided"):
                yield dtype, vocab, layout, None
        yield dtype, 128256, "wide-offsets", None
    yield torch.float64, 32000, "contiguous", None


def _logits(dtype, vocab: int, layout: str):
    """Meta logits (B, T, V) laid out as `layout` (no memory: the launcher only reads strides)."""
    import torch

    b, t = 2, 9
    if layout == "contiguous":
        return torch.empty(b, t, vocab, dtype=dtype, device="meta")
    if layout == "shifted-view":  # logits[:, :-1] of (B, T + 1, V): rows strided by (T + 1) V
        return torch.empty(b, t + 1, vocab, dtype=dtype, device="meta")[:, :-1]
    if layout == "column-strided":
        return torch.empty(vocab, b * t, dtype=dtype, device="meta").t().reshape(1, b * t, vocab)
    if layout == "wide-offsets":  # a column stride that makes offsets reach 2**31 elements
        return torch.empty(1, dtype=dtype, device="meta").as_strided((1, b * t, vocab), (0, 0, 1 << 16))
    raise ValueError(layout)


def compile_case(arch: int, dtype, vocab: int, layout: str, variant) -> list[Row]:
    import torch

    from maskdpo.kernels.launch import compile_only, default_variant
    from maskdpo.kernels.sequence_logps import triton_backward, triton_forward

    name = variant or default_variant((arch // 10, arch % 10))
    logits = _logits(dtype, vocab, layout)
    n = logits.shape[0] * logits.shape[1]
    meta = dict(device="meta")
    labels = torch.empty(n, dtype=torch.int64, **meta)
    weights = torch.empty(n, dtype=torch.float32, **meta)
    seq_ids = torch.empty(n, dtype=torch.int64, **meta)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    lse, rest, grad_out = (torch.empty(k, dtype=acc, **meta) for k in (n, n, 3))
    grad = torch.empty(logits.shape, dtype=dtype, **meta)
    with compile_only() as compiled:
        triton_forward(logits, labels, weights, seq_ids, 3, -100, name)
        triton_backward(grad_out, logits, labels, weights, seq_ids, lse, rest, 3, -100, grad, name)
    rows = []
    for c in compiled:
        registers, spills, shared = ptxas_usage(c.kernel.asm["ptx"], arch)
        warps = c.constants["num_warps"]
        streaming = "BLOCK_V" in c.constants  # the segment sum has one shape for every case
        rows.append(Row(arch, c.name, str(dtype).removeprefix("torch."), vocab if streaming else 0,
                        layout if streaming else "-", name if streaming else "-",
                        c.constants.get("BLOCK_V", c.constants.get("BLOCK", 0)), warps,
                        bool(c.constants.get("WIDE", False)), int(c.constants.get("ALIGN", 1)), registers, spills,
                        shared, blocks_per_sm(arch, registers, warps, shared)))
    return rows


def markdown(rows: list[Row], seconds: float) -> str:
    lines = ["# Triton kernels compiled for GPU targets on a CPU machine", "",
             f"Compiled by benchmarks/compile_table.py in {seconds:.0f} s (ptxas -v of each cubin). "
             "Blocks per SM from registers, threads and shared memory.", "",
             "| arch | kernel | dtype | V | layout | variant | warps | vector | 64-bit columns | registers | spill bytes | "
             "shared bytes | blocks/SM |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    seen = set()
    for r in rows:
        key = (r.arch, r.kernel, r.dtype, r.vocab, r.layout, r.variant)
        if key in seen:  # the segment sum is the same for every case of a dtype: once
            continue
        seen.add(key)
        lines.append(f"| sm_{r.arch} | {r.kernel.removeprefix('_').removesuffix('_kernel')} | {r.dtype} | {r.vocab} | "
                     f"{r.layout} | {r.variant} | {r.num_warps} | {r.align} | {'yes' if r.wide else 'no'} | "
                     f"{r.registers} | {r.spill_bytes} | {r.shared_bytes} | {r.blocks_per_sm} |")
    return "\n".join(lines) + "\n"


def problems(rows: list[Row]) -> list[str]:
    """What the compile lane refuses: spills (except fp64) and fewer than 2 blocks per SM for the
    streaming kernels."""
    out = []
    for r in rows:
        where = f"{r.kernel} sm_{r.arch} {r.dtype} V={r.vocab} {r.layout} {r.variant}"
        if r.spill_bytes and r.dtype != "float64":
            out.append(f"{where}: spills {r.spill_bytes} bytes ({r.registers} registers)")
        if r.kernel != "_segment_sum_kernel" and r.dtype != "float64" and r.blocks_per_sm < 2:
            out.append(f"{where}: {r.blocks_per_sm} block per SM")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(ARCHS),
                        help="compute capabilities to compile for")
    parser.add_argument("--out-dir", type=Path, default=Path("compile-table"), help="where the table goes")
    parser.add_argument("--quick", action="store_true", help="only every variant at V = 128256, contiguous")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET"):  # the kernels would be interpreted: start again without it
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.run([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])],
                              env=env).returncode

    from triton.runtime import driver

    start = time.perf_counter()
    rows: list[Row] = []
    failures = []
    cases = list(_cases(args.quick))
    for arch in args.arch:
        driver.set_active(_stub_driver(arch))  # for this process only: it launches nothing
        for i, (dtype, vocab, layout, variant) in enumerate(cases):
            try:
                rows += compile_case(arch, dtype, vocab, layout, variant)
            except Exception as e:  # noqa: BLE001 - every failing case is reported, then the exit code says so
                failures.append(f"sm_{arch} {dtype} V={vocab} {layout} {variant}: {type(e).__name__}: "
                                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}")
            print(f"sm_{arch}: {i + 1}/{len(cases)} cases compiled", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "compile-table.json").write_text(json.dumps(
        {"seconds": seconds, "rows": [asdict(r) for r in rows], "failures": failures}, indent=1) + "\n")
    (args.out_dir / "compile-table.md").write_text(markdown(rows, seconds))
    bad = failures + problems(rows)
    for line in bad:
        print(line, file=sys.stderr)
    print(f"{len(rows)} kernels compiled in {seconds:.0f} s; table in {args.out_dir}/compile-table.md", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
