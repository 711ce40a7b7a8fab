"""`maskdpo sample`: N responses per question, from an OpenAI-compatible server or a local model.

Questions JSONL: {"question_id", "question", "topic", "language", "reference"} per line.
Samples JSONL (appended; a rerun skips finished (question_id, sample_id)):
    {"question_id", "sample_id", "language", "topic", "prompt": [{"role": "user", ...}],
     "response", "sampling": {"source", "model", "temperature", "top_k", "max_tokens"}}
Defaults follow the paper: top-k 40, temperature 0.8 (temperature 0 is greedy, as for evaluation).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

from .data.errors import RecordError
from .data.jsonl import read_records
from .jobs import JobReport, run_jobs

QUESTION_FIELDS = ("question_id", "question")


@dataclass
class SamplingConfig:
    samples: int = 4
    temperature: float = 0.8
    top_k: int = 40
    max_tokens: int = 1024


def read_questions(path: str | Path) -> list[dict]:
    def parse(obj, line):
        if not isinstance(obj, dict):
            raise RecordError("a question must be a JSON object")
        for key in QUESTION_FIELDS:
            if not isinstance(obj.get(key), (str, int)) or isinstance(obj.get(key), bool):
                raise RecordError("missing or not a string", key)
        return {**obj, "question_id": str(obj["question_id"]), "language": obj.get("language", "en")}
    return [q for _, q in read_records(path, parse)]


def read_samples(path: str | Path) -> list[dict]:
    """Samples JSONL (what `sample` writes), with located errors for bad lines."""
    def parse(obj, line):
        if not isinstance(obj, dict):
            raise RecordError("a sample must be a JSON object")
        for key in ("question_id", "sample_id", "response", "prompt"):
            if key not in obj:
                raise RecordError("missing", key)
        if not isinstance(obj["response"], str):
            raise RecordError("must be a string", "response")
        return obj
    return [s for _, s in read_records(path, parse)]


def sample_key(record: dict) -> tuple:
    return str(record["question_id"]), str(record["sample_id"])


def _record(item: dict, response: str, sampling: dict) -> dict:
    q = item["question"]
    return {"question_id": q["question_id"], "sample_id": item["sample_id"], "language": q.get("language", "en"),
            "topic": q.get("topic"), "prompt": [{"role": "user", "content": q["question"]}], "response": response,
            "sampling": sampling}


def sample_server(questions: list[dict], output, client, config: SamplingConfig, concurrency: int = 8) -> JobReport:
    """Sample through a chat-completions server (top_k goes in the request body, as vLLM reads it)."""
    greedy = config.temperature == 0
    sampling = {"source": client.server.base_url, "model": client.server.model, "temperature": config.temperature,
                "top_k": None if greedy else config.top_k, "max_tokens": config.max_tokens}
    params = {"temperature": config.temperature, "max_tokens": config.max_tokens}
    if not greedy:
        params["extra_body"] = {"top_k": config.top_k}

    def work(item):
        text = client.complete([{"role": "user", "content": item["question"]["question"]}], **params)
        return _record(item, text, sampling)

    items = [{"question_id": q["question_id"], "sample_id": k, "question": q}
             for q in questions for k in range(config.samples)]
    return run_jobs(items, work, output, sample_key, concurrency, desc="sampling")


def sample_local(questions: list[dict], output, model_dir: str | Path, config: SamplingConfig,
                 seed: int = 0) -> JobReport:
    """Sample with transformers' generate() from a local model directory (small models, tests)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    greedy = config.temperature == 0
    sampling = {"source": "local", "model": str(model_dir), "temperature": config.temperature,
                "top_k": None if greedy else config.top_k, "max_tokens": config.max_tokens}

    def work(item):
        messages = [{"role": "user", "content": item["question"]["question"]}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        torch.manual_seed(seed * 1_000_003 + zlib.crc32("/".join(sample_key(item)).encode()))  # per item: resumable
        with torch.no_grad():
            out = model.generate(ids, do_sample=not greedy, temperature=config.temperature if not greedy else None,
                                 top_k=config.top_k if not greedy else None, max_new_tokens=config.max_tokens,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        return _record(item, tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True), sampling)

    items = [{"question_id": q["question_id"], "sample_id": k, "question": q}
             for q in questions for k in range(config.samples)]
    return run_jobs(items, work, output, sample_key, concurrency=1, desc="sampling")

