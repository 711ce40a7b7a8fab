"""A chat-completions client for OpenAI-compatible servers (vLLM, LMDeploy, SGLang), with retries.

Timeouts, connection errors, 429 and 5xx answers, and malformed replies (no choices, no text, empty or
whitespace-only text) are retried with exponential backoff; anything else (a 4xx, a wrong model name) fails at once.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass

from .jobs import Counter


class ChatError(RuntimeError):
    pass


@dataclass
class ServerConfig:
    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    max_retries: int = 5
    backoff: float = 1.0  # seconds before the first retry; doubled each time, with jitter


class ChatClient:
    """Thread-safe: one client is shared by the worker threads."""

    def __init__(self, server: ServerConfig):
        import openai

        self.server = server
        # Retries are ours (they also cover malformed replies), so the library makes one attempt.
        self.client = openai.OpenAI(base_url=server.base_url, api_key=os.environ.get(server.api_key_env, "EMPTY"),
                                    timeout=server.timeout, max_retries=0)
        self.retries = Counter()

    @property
    def retried(self) -> int:
        return self.retries.value

    def complete(self, messages: list[dict], **params) -> str:
        import openai

        retryable = (openai.APITimeoutError, openai.APIConnectionError, openai.InternalServerError,
                     openai.RateLimitError)
        last = None
        for attempt in range(self.server.max_retries + 1):
            if attempt:
                self.retries.add()
                time.sleep(self.server.backoff * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                reply = self.client.chat.completions.create(model=self.server.model, messages=messages, **params)
                text = reply.choices[0].message.content if reply.choices else None
                if isinstance(text, str) and text.strip():
                    return text
                # An empty reply is no answer (a stored one would fail every later step): retried.
                last = ChatError("the server's reply holds no message text" if not isinstance(text, str)
                                 else "the server's reply is empty")
            except retryable as e:
                last = e
            except openai.APIStatusError as e:
                raise ChatError(f"{self.server.base_url}: HTTP {e.status_code}: {e.message}") from None
            except (ValueError, TypeError, AttributeError) as e:  # a body that is not a chat completion
                last = e
        raise ChatError(f"{self.server.base_url}: no usable reply after {self.server.max_retries + 1} attempts "
                        f"({type(last).__name__}: {last})")
