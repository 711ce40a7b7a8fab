"""What a run needs before its first step, each prepared once on rank 0 and then read by every rank:
the starting model, the encoded and packed pairs, the reference log-probs."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


def quiet_logs() -> None:
    """One clear line per warning from rank 0, not DeepSpeed's info logs from every rank. Call before
    DeepSpeed is imported."""
    import logging
    import warnings

    from ..accelerator import name_cpu_accelerator
    from .distributed import rank_zero

    name_cpu_accelerator()
    import deepspeed  # noqa: F401  (creates its logger, at level WARNING: set ours after)

    level = logging.WARNING if rank_zero() else logging.ERROR
    logging.getLogger("DeepSpeed").setLevel(level)
    logging.getLogger("deepspeed").setLevel(level)
    warnings.simplefilter("once")
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # libraries' notices, not ours


def starting_model(config, run_dir: Path, say) -> Path:
    """The starting checkpoint: model.path, or a random init written once to RUN_DIR/init (rank 0)."""
    if config.model.path is not None:
        return Path(config.model.path)
    path = run_dir / "init"
    made_by = {"architecture": config.model.architecture, "seed": config.train.seed}
    record = path / "maskdpo-init.json"
    if dist.get_rank() == 0:
        previous = json.loads(record.read_text()) if record.exists() else None
        if previous != json.loads(json.dumps(made_by)) or not (path / "config.json").exists():
            # No checkpoint of another architecture or seed can be here (the run directory was checked):
            # an init left by a run stopped before its first checkpoint is made again for this one.
            from ..model.architecture import Architecture
            from ..model.hf import save_llama
            from ..model.llama import Llama

            torch.manual_seed(config.train.seed)
            save_llama(Llama(Architecture.from_architecture(config.model.architecture)), path)
            record.write_text(json.dumps(made_by))
            say(f"random-initialised model written to {path}")
    dist.barrier()
    return path


@dataclass
class PreparedData:
    encoded: object  # maskdpo.data.EncodeResult
    packing: object  # maskdpo.data.Packing
    tokenizer: object
    tokenizer_dir: Path


def prepare_data(config, run_dir: Path, say) -> PreparedData:
    """Encode (rank 0 first, into the cache; the others then read it) and pack the pairs."""
    from ..data import LabelMap, encode_file, load_tokenizer, pack_pairs, pair_to_json
    from ..data.bundled import bundled_pairs
    from ..data.jsonl import write_jsonl
    from ..data.tokenizer import run_tokenizer_dir

    d, rank = config.data, dist.get_rank()
    pairs_path = Path(d.pairs)
    if d.pairs == "bundled":
        pairs_path = run_dir / "bundled-pairs.jsonl"
        if rank == 0:
            write_jsonl(pairs_path, (pair_to_json(p) for p in bundled_pairs()))
    tokenizer_path = run_tokenizer_dir(d.tokenizer, config.model.path)
    options = dict(max_length=d.max_length, eot=d.eot, mask=d.mask, strict=not d.skip_invalid,
                   label_map=LabelMap.from_lists(d.correct_labels, d.hallucinated_labels), cache_dir=d.cache_dir)
    if rank == 0:
        encoded = encode_file(pairs_path, tokenizer_path, progress=True, **options)
    dist.barrier()
    if rank != 0:
        encoded = encode_file(pairs_path, tokenizer_path, **options)
    for line in encoded.summary_lines():
        say(line)
    tokenizer = load_tokenizer(tokenizer_path)
    # Every side is at most max_length tokens: attention's bound (max_seqlen), far below the budget.
    packing = pack_pairs(encoded.pairs, d.token_budget, tokenizer.pad_token_id or 0, config.train.micro_batch_pairs,
                         max_seqlen=min(d.max_length, d.token_budget))
    say(f"packed {len(encoded.pairs)} pairs into {len(packing.micro_batches)} micro-batches of "
        f"{d.token_budget} tokens ({packing.efficiency:.1%} of token slots used)")
    return PreparedData(encoded, packing, tokenizer, tokenizer_path)


def reference_table(engine, config, model_path: Path, data: PreparedData, say) -> torch.Tensor:
    """The (num_pairs, 2) reference sums under this run's weights, from the per-token log-probs of
    the starting model: cached, or from one reference pass.

    Rank 0 decides whether the cache answers, and shares its decision and the table: ranks that
    disagreed (a cache directory that is not shared across nodes) would enter different collectives."""
    from ..dpo.reference_cache import load_tokens, reference_key, save_tokens, side_weights, weighted_sums

    pairs = data.encoded.pairs
    key = reference_key(model_path,
                        extra={"bf16": config.parallel.bf16, "attention": engine.attention_backend,
                               "head": config.model.head, "max_seqlen": data.packing.max_seqlen,
                               "budget": config.data.token_budget})
    cached = load_tokens(config.data.cache_dir, key, pairs) if dist.get_rank() == 0 else None
    shared = [None if cached is None else weighted_sums(cached, side_weights(pairs), len(pairs))]
    dist.broadcast_object_list(shared, src=0)
    if shared[0] is not None:
        say("reference log-probs: loaded from cache (per token; summed under this run's weights)")
        return shared[0]
    start = time.perf_counter()
    tokens = engine.reference_token_logps(data.packing.micro_batches)
    table = weighted_sums(tokens, side_weights(pairs), len(pairs))
    if dist.get_rank() == 0:
        try:
            save_tokens(config.data.cache_dir, key, pairs, tokens)
        except OSError as e:  # the run goes on; only the next one pays the pass again
            say(f"warning: reference log-probs not cached ({e})")
    say(f"reference log-probs: computed in {time.perf_counter() - start:.1f}s")
    return table
