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

from ..data.errors import RecordError
from ..data.jsonl import read_records
from .jobs import JobReport, run_jobs

QUESTION_FIELDS = ("question_id", "question")


@dataclass
class SamplingConfig:
    samples: int = 4
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 1.0  # sent explicitly: a model's generation_config may default to 0.9
    max_tokens: int = 1024

    def settings(self, source: str, model: str) -> dict:
        """What each record keeps; a rerun into the same file must use the same."""
        greedy = self.temperature == 0
        return {"source": source, "model": model, "temperature": self.temperature,
                "top_k": None if greedy else self.top_k, "top_p": None if greedy else self.top_p,
                "max_tokens": self.max_tokens}


def _same_settings(settings: dict):
    def mismatch(record):
        old = record.get("sampling", {})
        changed = [f"{k}: {old.get(k)!r} then, {v!r} now" for k, v in settings.items() if old.get(k) != v]
        return "; ".join(changed) or None
    return mismatch


def read_questions(path: str | Path) -> list[dict]:
    """Questions JSONL, each line checked (errors name file, line and field); ids must be unique."""
    seen = {}

    def parse(obj, line):
        if not isinstance(obj, dict):
            raise RecordError("a question must be a JSON object")
        if not isinstance(obj.get("question_id"), (str, int)) or isinstance(obj.get("question_id"), bool):
            raise RecordError("missing, or not a string or integer", "question_id")
        if not isinstance(obj.get("question"), str) or not obj["question"].strip():
            raise RecordError("missing or empty", "question")
        for key in ("language", "reference", "topic"):
            if obj.get(key) is not None and not isinstance(obj[key], str):
                raise RecordError("must be a string", key)
        qid = str(obj["question_id"])
        if qid in seen:
            raise RecordError(f"duplicate question_id {qid!r} (first on line {seen[qid]})", "question_id")
        seen[qid] = line
        return {**obj, "question_id": qid, "language": obj.get("language") or "en"}
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
        return {**obj, "question_id": str(obj["question_id"])}
    samples, first_line = [], {}
    for line, sample in read_records(path, parse):
        key = sample_key(sample)
        if key in first_line:  # two different responses for one sample: which to annotate is a guess
            raise RecordError(f"duplicate sample (question_id {key[0]!r}, sample_id {key[1]!r}), first on line "
                              f"{first_line[key]}", "sample_id", path=str(path), line=line)
        first_line[key] = line
        samples.append(sample)
    return samples


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
    sampling = config.settings(client.server.base_url, client.server.model)
    params = {"temperature": config.temperature, "max_tokens": config.max_tokens}
    if not greedy:
        params["top_p"] = config.top_p
        params["extra_body"] = {"top_k": config.top_k}

    def work(item):
        text = client.complete([{"role": "user", "content": item["question"]["question"]}], **params)
        return _record(item, text, sampling)

    items = [{"question_id": q["question_id"], "sample_id": k, "question": q}
             for q in questions for k in range(config.samples)]
    return run_jobs(items, work, output, sample_key, concurrency, desc="sampling", mismatch=_same_settings(sampling))


def stop_tokens(model, tokenizer) -> list[int]:
    """Where generation ends: the model's generation config's end-of-sequence ids, the tokenizer's,
    and the chat template's end of turn (a base tokenizer's end of sequence is often not the token an
    assistant turn ends with: Llama-3's <|end_of_text|> vs <|eot_id|>, Qwen's <|endoftext|> vs <|im_end|>)."""
    from ..data.masks import end_of_turn

    configured = model.generation_config.eos_token_id
    configured = configured if isinstance(configured, list) else [configured]
    found = [*configured, tokenizer.eos_token_id, end_of_turn(tokenizer)]
    return list(dict.fromkeys(i for i in found if i is not None))


def sample_local(questions: list[dict], output, model_dir: str | Path, config: SamplingConfig,
                 seed: int = 0) -> JobReport:
    """Sample with transformers' generate() from a local model directory (small models, tests)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    greedy = config.temperature == 0
    stop = stop_tokens(model, tokenizer)
    sampling = config.settings("local", str(model_dir))

    def work(item):
        messages = [{"role": "user", "content": item["question"]["question"]}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        torch.manual_seed(seed * 1_000_003 + zlib.crc32("/".join(sample_key(item)).encode()))  # per item: resumable
        with torch.no_grad():
            out = model.generate(ids, do_sample=not greedy, temperature=config.temperature if not greedy else None,
                                 top_k=config.top_k if not greedy else None, top_p=config.top_p if not greedy else None,
                                 max_new_tokens=config.max_tokens,
                                 pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0],
                                 eos_token_id=stop)
        return _record(item, tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True), sampling)

    items = [{"question_id": q["question_id"], "sample_id": k, "question": q}
             for q in questions for k in range(config.samples)]
    return run_jobs(items, work, output, sample_key, concurrency=1, desc="sampling", mismatch=_same_settings(sampling))

