"""What an exported model directory holds besides its weights, so that serving stacks (vLLM, SGLang,
LMDeploy, transformers' generate) use it as they would the source model:

- the tokenizer's own files, copied byte for byte from the directory the run tokenized with (not
  re-saved: a re-save rewrites tokenizer_config.json in the installed transformers' format);
- generation_config.json copied from the source model; for a random init (or a source without one),
  written with the chat template's end-of-turn token as end of sequence, so generation stops at the
  end of an assistant turn;
- config.json's bos/eos token ids where the source left them unset (a random init), from that
  generation config;
- ordinary file permissions: safetensors writes its files 0600; every file here becomes readable as
  the process's umask allows any new file to be (0644 under the usual umask 022).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

GENERATION_CONFIG = "generation_config.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def generation_config_for(tokenizer) -> dict:
    """A generation config from the tokenizer alone: end of sequence is the chat template's
    end-of-turn token (what an assistant turn ends with) and the tokenizer's own end of sequence."""
    from ..data.masks import end_of_turn

    eos = [i for i in (end_of_turn(tokenizer), tokenizer.eos_token_id) if i is not None]
    eos = list(dict.fromkeys(eos))
    config = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": eos[0] if len(eos) == 1 else eos}
    if tokenizer.pad_token_id is not None:
        config["pad_token_id"] = tokenizer.pad_token_id
    return {k: v for k, v in config.items() if v is not None and v != []}


def write_serving_files(out: str | Path, source: str | Path, tokenizer_dir: str | Path) -> None:
    """Complete the exported directory `out` (weights and config.json already written) from the
    starting model's directory `source` and the tokenizer directory the run used."""
    from ..data.tokenizer import TOKENIZER_FILES, load_tokenizer

    out, source, tokenizer_dir = Path(out), Path(source), Path(tokenizer_dir)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, out / name)
    if (source / GENERATION_CONFIG).is_file():
        shutil.copyfile(source / GENERATION_CONFIG, out / GENERATION_CONFIG)
        generation = json.loads((out / GENERATION_CONFIG).read_text())
    else:
        generation = generation_config_for(load_tokenizer(tokenizer_dir))
        (out / GENERATION_CONFIG).write_text(json.dumps(generation, indent=2) + "\n")
    config_file = out / "config.json"
    config = json.loads(config_file.read_text())
    missing = {k: generation[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
               if config.get(k) is None and generation.get(k) is not None}
    if missing:
        config.update(missing)
        config_file.write_text(json.dumps(config, indent=2))
    mode = 0o666 & ~_umask()
    for file in out.iterdir():
        if file.is_file():
            file.chmod(mode)
