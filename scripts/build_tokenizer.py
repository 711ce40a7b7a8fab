#!/usr/bin/env python3
"""Build the bundled tokenizer: a byte-level BPE trained on text this project owns.

    python scripts/build_tokenizer.py            # writes maskdpo/assets/tokenizer/
    python scripts/build_tokenizer.py --check    # rebuilds in memory, fails if the shipped files differ

The training text is the bundled example data (questions, reference documents, responses); the
chat template follows the Llama-3 layout (header tokens, <|eot_id|> ends a turn), so
masks built with it behave like masks built with a Llama-3 tokenizer. Training is single-threaded
and the corpus order fixed, so the output is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ["RAYON_NUM_THREADS"] = "1"  # deterministic merges; must precede importing tokenizers

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "maskdpo" / "assets"
OUT = ASSETS / "tokenizer"
VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<|pad|>"]
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def corpus() -> list[str]:
    """Every text field of the bundled data, in file order."""
    texts = []
    for name in ("questions.jsonl", "annotated.jsonl"):
        for line in (ASSETS / "data" / name).read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            for key in ("topic", "question", "reference", "response"):
                if isinstance(record.get(key), str):
                    texts.append(record[key])
    return texts


def build(out_dir: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|pad|>",
        model_max_length=8192,
    )
    fast.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="verify the shipped files instead of writing them")
    args = parser.parse_args(argv)
    if not args.check:
        build(OUT)
        print(f"wrote {OUT}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        stale = [f for f in FILES if (Path(tmp) / f).read_bytes() != (OUT / f).read_bytes()]
    if stale:
        print(f"shipped tokenizer differs from a fresh build: {', '.join(stale)}; run scripts/build_tokenizer.py",
              file=sys.stderr)
        return 1
    print("shipped tokenizer matches a fresh build")
    return 0


if __name__ == "__main__":
    sys.exit(main())
