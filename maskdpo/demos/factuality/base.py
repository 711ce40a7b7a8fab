"""The demo's base policy: a tiny Llama taught the world by a short supervised step (plainly a demo,
not a product feature). It reads the supervised corpus (world.sft_corpus: people shown 8 times, twice
or never), learns the answers' form well and the facts of each person as often as it saw them: its
answers mix true and false sentences, for a reason.

Saved as a Hugging Face directory with the bundled tokenizer and a generation config that stops at
the end of an assistant turn: what `maskdpo sample --local-model` and `maskdpo train --model.path` read.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BaseRecipe:
    """The base policy and its supervised step."""

    hidden_size: int = 128
    """Width of the residual stream."""
    layers: int = 4
    """Decoder layers."""
    heads: int = 4
    """Attention heads (as many key/value heads)."""
    steps: int = 400
    """Optimizer steps over the corpus (40 epochs of the default world's 160 answers: people seen 8
    times are known, twice partly known, never guessed at)."""
    batch: int = 16
    """Answers per step."""
    lr: float = 3e-3
    """AdamW's peak learning rate (cosine to a tenth of it)."""


def encode(tokenizer, record: dict) -> tuple[list[int], list[int]]:
    """(token ids, labels) of one {prompt, response} record in the chat template: only the response
    and its end of turn are learnt (labels -100 elsewhere)."""
    messages = [{"role": "user", "content": record["prompt"]}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": record["response"]}],
                                         tokenize=False)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return ids, [-100] * start + ids[start:]


def train_base(corpus: list[dict], out: str | Path, seed: int, recipe: BaseRecipe = BaseRecipe(),
               say=print) -> Path:
    """Train the base policy on `corpus` from a random init seeded by `seed`; save it to `out`."""
    import torch
    import transformers

    from ...assets import TOKENIZER
    from ...data.tokenizer import load_tokenizer
    from ...train.serving_files import write_serving_files

    tokenizer = load_tokenizer()
    encoded = [encode(tokenizer, r) for r in corpus]
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden_size, intermediate_size=2 * recipe.hidden_size,
        num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads, num_key_value_heads=recipe.heads,
        max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = transformers.LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, recipe.steps) / recipe.steps)))
    generator = torch.Generator().manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    started, losses = time.time(), []
    model.train()
    for step in range(recipe.steps):
        batch = [encoded[i] for i in torch.randint(len(encoded), (recipe.batch,), generator=generator).tolist()]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if (step + 1) % max(1, recipe.steps // 5) == 0:
            say(f"base policy: step {step + 1}/{recipe.steps}, loss {sum(losses[-20:]) / len(losses[-20:]):.3f} "
                f"({time.time() - started:.0f} s)")
    out = Path(out)
    model.eval()
    model.save_pretrained(str(out))
    # transformers' generation config stops at the tokenizer's end of sequence only: write ours,
    # which stops at the chat template's end of turn too (a random init's, as the export does).
    (out / "generation_config.json").unlink(missing_ok=True)
    write_serving_files(out, out, TOKENIZER)
    (out / "base_training.json").write_text(json.dumps({"seed": seed, "recipe": recipe.__dict__,
                                                        "final_loss": sum(losses[-20:]) / len(losses[-20:])}) + "\n")
    return out
