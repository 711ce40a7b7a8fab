"""Run under torchrun by test_pipeline.py: real DeepSpeed pipelines on CPU (gloo), results to files.

Scenarios, in one launch of WORLD_SIZE processes:
  grads-pp{P}   one SGD(lr=1) step with P pipeline stages (DP = WORLD_SIZE / P): parameter deltas
                are minus the gradients; also the step's loss and metrics
  resume        PP=2: checkpoint after step 1, steps 2-3, then a fresh engine loads the checkpoint
                and repeats steps 2-3; then an HF export
  bf16-checkpointing  PP=2 with bf16 weights, fp32 gradient accumulation, activation checkpointing:
                two AdamW steps on the same two micro-batches
  train         PP=2 (split by parameter count) AdamW: a few steps on the bundled pairs, losses and
                reward accuracies
  packing-{M}-pp{P}  one SGD(lr=1) step over the same 8 pairs packed with at most M pairs per
                micro-batch, with P pipeline stages (DP = WORLD_SIZE / P)
  tp{T}-pp{P}[-tied][-bf16]  one SGD(lr=1) step with T tensor-parallel ranks and P pipeline stages,
                gradient clipping 1e9 (through DeepSpeed's norm, never binding), then an HF export
                (the shards gathered); -tied: the tied model whose vocabulary T does not divide; -bf16:
                bf16 weights with ZeRO-1 (DeepSpeed's BF16_Optimizer, fp32 master weights), else fp32
  grads-pp{P}[-tied]-bf16  grads-pp{P} in bf16 (as -bf16 above), clipping 1e9 (the norm, never binding);
                grads-pp{P}-tied clips at 1e9 in fp32 too
  tp{T}-pp{P}-resume  AdamW: checkpoint after step 1, steps 2-3, then a fresh engine resumes from it
  family-pp2-{F}  grads-pp2 on family F's checkpoint (--family F=DIR), clipping 1e9 (the norm)
  family-tp2-{F}  one SGD(lr=1, momentum) step at T = 2 (the oracle's), exported; checkpoint; two
                steps, then the same two from the checkpoint in a fresh engine, both exported
  tp-collectives  one decoder layer in float64 (Llama's, Qwen2's, Qwen3's), sharded over every rank
                (T = WORLD_SIZE), and the same layer whole: outputs and gradients of both, and the collectives the sharded
                layer's forward and backward each took (tests/dispatched.py)
"""

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from pipeline_data import micro_batches, packed_differently

from maskdpo.model.hf import load_config
from maskdpo.model.pipeline import stage_hf_tensors
from maskdpo.train.engine import PipelineTrainer


def save_params(trainer, out: Path, name: str):
    if trainer.layout.dp_rank == 0:
        tensors = {n: t.detach().clone() for n, t in stage_hf_tensors(trainer.module, trainer.config.num_hidden_layers).items()}
        torch.save(tensors, out / f"{name}-stage{trainer.layout.stage}.pt")


def write(out: Path, name: str, data):
    if dist.get_rank() == 0:
        (out / f"{name}.json").write_text(json.dumps(data))


def layer_collectives(config, world: int) -> dict:
    """One decoder layer sharded T = world ways against the same layer whole (float64): the largest
    differences of the output and of every gradient, and the c10d collectives of each pass."""
    import copy

    from maskdpo.model.llama import DecoderLayer
    from maskdpo.model.tensor_parallel import TensorParallel, parallelize
    from maskdpo.train.distributed import init_distributed

    init_distributed()  # what the trainers of the other scenarios do
    torch.manual_seed(0)
    whole = DecoderLayer(config, backend="sdpa").double()
    with torch.no_grad():  # norms away from 1, biases (Linear's init) already random
        for name, p in whole.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    sharded = copy.deepcopy(whole)
    parallelize(sharded, TensorParallel(None, dist.get_rank(), world))
    lengths = [5, 7]
    positions = torch.cat([torch.arange(n) for n in lengths])
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    x = torch.randn(sum(lengths), config.hidden_size, dtype=torch.float64)
    x_whole, x_sharded = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_whole = whole(x_whole, positions, cu, max(lengths))
    y_whole.pow(2).sum().backward()

    def collectives(run) -> dict:
        from dispatched import collectives as calls

        with calls() as names:
            out = run()
        return out, {n: names.count(n) for n in sorted(set(names))}

    y_sharded, forward = collectives(lambda: sharded(x_sharded, positions, cu, max(lengths)))
    _, backward = collectives(lambda: y_sharded.pow(2).sum().backward())
    errors = {"output": (y_sharded - y_whole).abs().max().item(), "input": (x_sharded.grad - x_whole.grad).abs().max().item()}
    full = dict(whole.named_parameters())
    for name, p in sharded.named_parameters():
        dim, start, stop = getattr(p, "tp_slice", (0, 0, p.shape[0]))
        errors[name] = (p.grad - full[name].grad.narrow(dim, start, stop - start)).abs().max().item()
    return {"forward": forward, "backward": backward, "errors": errors}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hf", type=Path, required=True)
    parser.add_argument("--hf-tied", type=Path, default=None, help="a tied-embedding model for grads-*-tied")
    parser.add_argument("--hf-odd", type=Path, default=None, help="a tied model with an odd vocabulary, for tp*-tied")
    parser.add_argument("--family", nargs="*", default=[], metavar="NAME=DIR",
                        help="the other families' checkpoints, for family-*-NAME")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scenarios", nargs="+", required=True)
    args = parser.parse_args()
    config = load_config(args.hf)
    mbs, num_pairs = micro_batches()
    world = int(os.environ["WORLD_SIZE"])
    sgd = lambda params: torch.optim.SGD(params, lr=1.0)  # noqa: E731

    families = dict(item.split("=", 1) for item in args.family)

    for scenario in args.scenarios:
        if scenario.startswith("family-pp2-"):
            hf = families[scenario.removeprefix("family-pp2-")]
            trainer = PipelineTrainer(load_config(hf), pipeline_stages=2, gradient_accumulation_steps=len(mbs) * 2 // world,
                                      optimizer_factory=sgd, hf_path=hf, gradient_clipping=1e9)
            ref = trainer.reference_logps(mbs, num_pairs)
            metrics = trainer.train_step(mbs, ref)
            metrics["grad_norm"] = float(trainer.engine.get_global_grad_norm())
            save_params(trainer, args.out, scenario)
            write(args.out, scenario, {"metrics": metrics, "reference": ref.tolist()})
        elif scenario.startswith("family-tp2-"):
            # T = 2: the oracle's step (SGD, lr = 1; with momentum, so that the optimizer has state to
            # resume: its first step is plain SGD's), exported; a checkpoint; two more steps, and the
            # same two steps again from the checkpoint in a fresh engine.
            hf = families[scenario.removeprefix("family-tp2-")]

            def make(hf=hf):
                return PipelineTrainer(load_config(hf), pipeline_stages=1, tensor_parallel=2,
                                       gradient_accumulation_steps=len(mbs) * 2 // world, hf_path=hf,
                                       optimizer_factory=lambda params: torch.optim.SGD(params, lr=1.0, momentum=0.9),
                                       gradient_clipping=1e9)
            trainer = make()
            ref = trainer.reference_logps(mbs, num_pairs)
            metrics = trainer.train_step(mbs, ref)
            metrics["grad_norm"] = float(trainer.engine.get_global_grad_norm())
            trainer.export_hf(args.out / f"{scenario}-hf")
            trainer.save_checkpoint(args.out / f"{scenario}-ckpt", tag="step1")
            straight = [trainer.train_step(mbs, ref)["loss"] for _ in range(2)]
            trainer.export_hf(args.out / f"{scenario}-straight")
            resumed_trainer = make()
            resumed_trainer.load_checkpoint(args.out / f"{scenario}-ckpt", tag="step1")
            resumed = [resumed_trainer.train_step(mbs, ref)["loss"] for _ in range(2)]
            resumed_trainer.export_hf(args.out / f"{scenario}-resumed")
            write(args.out, scenario, {"metrics": metrics, "reference": ref.tolist(), "straight": straight,
                                       "resumed": resumed})
        elif scenario.startswith("grads-pp"):
            bf16 = scenario.endswith("-bf16")
            name = scenario.removesuffix("-bf16")
            pp = int(name[len("grads-pp"):].removesuffix("-tied"))
            hf = args.hf_tied if name.endswith("-tied") else args.hf
            # PP=1 (DP=2) runs the kernel head (full logits + sequence_logps); the others the fused one.
            trainer = PipelineTrainer(load_config(hf), pipeline_stages=pp, head="kernel" if pp == 1 else "fused",
                                      gradient_accumulation_steps=len(mbs) * pp // world, optimizer_factory=sgd, hf_path=hf,
                                      bf16=bf16, gradient_clipping=1e9 if bf16 or name.endswith("-tied") else 0.0)
            ref = trainer.reference_logps(mbs, num_pairs)
            metrics = trainer.train_step(mbs, ref)
            if trainer.engine.get_global_grad_norm() is not None:
                metrics["grad_norm"] = float(trainer.engine.get_global_grad_norm())
            save_params(trainer, args.out, scenario)
            write(args.out, scenario, {"metrics": metrics, "reference": ref.tolist()})
        elif scenario.startswith("packing-"):
            per_mb, pp = scenario[len("packing-"):].split("-pp")
            pp = int(pp)
            mbs_packed, pairs = packed_differently(int(per_mb), world // pp)
            trainer = PipelineTrainer(config, pipeline_stages=pp, gradient_accumulation_steps=len(mbs_packed) * pp // world,
                                      optimizer_factory=sgd, hf_path=args.hf, max_seqlen=192)
            ref = trainer.reference_logps(mbs_packed, pairs)
            metrics = trainer.train_step(mbs_packed, ref)
            save_params(trainer, args.out, scenario)
            write(args.out, scenario, {"metrics": metrics, "reference": ref.tolist(),
                                       "pairs_per_micro_batch": [mb.num_pairs for mb in mbs_packed]})
        elif scenario == "tp-collectives":  # the Llama layer, and Qwen2's (biases) and Qwen3's (q/k norms)
            from dataclasses import replace
            write(args.out, scenario, {family: layer_collectives(replace(config, model_type=family), world)
                                       for family in ("llama", "qwen2", "qwen3")})
        elif scenario.startswith("tp") and scenario.endswith("-resume"):
            tp, pp = (int(x) for x in scenario[2:].removesuffix("-resume").split("-pp"))
            dp = world // (tp * pp)

            def make(tp=tp, pp=pp, dp=dp):
                return PipelineTrainer(config, pipeline_stages=pp, tensor_parallel=tp, gradient_accumulation_steps=2 // dp,
                                       optimizer_factory=lambda params: torch.optim.AdamW(params, lr=1e-3), hf_path=args.hf)
            trainer = make()
            ref = trainer.reference_logps(mbs, num_pairs)
            steps = [mbs[0:2], mbs[2:4], mbs[0:2]]
            trainer.train_step(steps[0], ref)
            trainer.save_checkpoint(args.out / f"{scenario}-ckpt", tag="step1")
            straight = [trainer.train_step(s, ref)["loss"] for s in steps[1:]]
            trainer.export_hf(args.out / f"{scenario}-straight")
            resumed_trainer = make()
            resumed_trainer.load_checkpoint(args.out / f"{scenario}-ckpt", tag="step1")
            resumed = [resumed_trainer.train_step(s, ref)["loss"] for s in steps[1:]]
            resumed_trainer.export_hf(args.out / f"{scenario}-resumed")
            write(args.out, scenario, {"straight": straight, "resumed": resumed})
        elif scenario.startswith("tp"):
            bf16 = scenario.endswith("-bf16")
            name = scenario.removesuffix("-bf16")
            tp, pp = (int(x) for x in name[2:].removesuffix("-tied").split("-pp"))
            hf = args.hf_odd if name.endswith("-tied") else args.hf
            trainer = PipelineTrainer(load_config(hf), pipeline_stages=pp, tensor_parallel=tp,
                                      gradient_accumulation_steps=len(mbs) * pp * tp // world, optimizer_factory=sgd,
                                      hf_path=hf, gradient_clipping=1e9, bf16=bf16)
            ref = trainer.reference_logps(mbs, num_pairs)
            metrics = trainer.train_step(mbs, ref)
            metrics["grad_norm"] = float(trainer.engine.get_global_grad_norm())  # what clipping would use
            trainer.export_hf(args.out / f"{scenario}-hf")
            shapes = {n: list(p.shape) for n, p in trainer.module.named_parameters()}
            # Replicated parameters (norms) must stay identical on every tensor rank.
            tp_group = trainer.tensor_parallel.group
            replicated_equal = True
            for p in trainer.module.parameters():
                if tp_group is not None and getattr(p, "tp_slice", None) is None:
                    copies = [torch.empty_like(p) for _ in range(tp)]
                    dist.all_gather(copies, p.detach().contiguous(), group=tp_group)
                    replicated_equal &= all(torch.equal(c, copies[0]) for c in copies)
            metrics["replicated_equal"] = replicated_equal
            gathered = [None] * world
            dist.all_gather_object(gathered, [trainer.layout.tp_rank, trainer.layout.stage, shapes])
            write(args.out, scenario, {"metrics": metrics, "reference": ref.tolist(), "shapes": gathered})
        elif scenario == "resume":
            def make():
                return PipelineTrainer(config, pipeline_stages=2, gradient_accumulation_steps=2,
                                       optimizer_factory=lambda params: torch.optim.AdamW(params, lr=1e-3), hf_path=args.hf)
            trainer = make()
            ref = trainer.reference_logps(mbs, num_pairs)
            steps = [mbs[0:2], mbs[2:4], mbs[0:2]]
            trainer.train_step(steps[0], ref)
            trainer.save_checkpoint(args.out / "ckpt", tag="step1", client_state={"step": 1})
            straight = [trainer.train_step(s, ref)["loss"] for s in steps[1:]]
            save_params(trainer, args.out, "straight")
            resumed_trainer = make()
            state = resumed_trainer.load_checkpoint(args.out / "ckpt", tag="step1")
            resumed = [resumed_trainer.train_step(s, ref)["loss"] for s in steps[1:]]
            save_params(resumed_trainer, args.out, "resumed")
            resumed_trainer.export_hf(args.out / "export")
            write(args.out, "resume", {"straight": straight, "resumed": resumed, "client_state": state.get("step")})
        elif scenario == "bf16-checkpointing":
            trainer = PipelineTrainer(config, pipeline_stages=2, gradient_accumulation_steps=2, bf16=True,
                                      activation_checkpointing=True, gradient_clipping=1.0,
                                      optimizer_factory=lambda p: torch.optim.AdamW(p, lr=2e-3), hf_path=args.hf)
            # two steps on the same two micro-batches (interpreted bf16 is slow: one step shows the update)
            ref = trainer.reference_logps(mbs[:2], num_pairs)
            history = [trainer.train_step(mbs[:2], ref) for _ in range(2)]
            dtypes = sorted({str(p.dtype) for p in trainer.module.parameters()})
            write(args.out, "bf16-checkpointing", {"history": history, "dtypes": dtypes})
        elif scenario == "train":
            trainer = PipelineTrainer(config, pipeline_stages=2, gradient_accumulation_steps=2,
                                      partition_method="parameters",
                                      optimizer_factory=lambda p: torch.optim.AdamW(p, lr=2e-3), hf_path=args.hf)
            ref = trainer.reference_logps(mbs, num_pairs)
            history = [trainer.train_step(mbs[(2 * i) % len(mbs):(2 * i) % len(mbs) + 2], ref) for i in range(8)]
            write(args.out, "train", history)
        dist.barrier()


if __name__ == "__main__":
    main()
