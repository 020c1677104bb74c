"""Prompt checks, with tokens counted the way Qwen counts them.

The upstream limit is 2000 *tokens*, not characters. Qwen's BPE vocabulary ships inside the
``dashscope`` package (``resources/qwen.tiktoken``); we load it with ``tiktoken`` once, offline,
so "make the shirt red" counts 4 and "把背景换成海边" counts 4, exactly as the model sees them.
"""

from __future__ import annotations

import base64
import threading
from importlib import resources

import tiktoken

from app.errors import InputError

MAX_PROMPT_TOKENS = 2000
# The pre-tokenising pattern Qwen's tokenizer uses (from its published tokenizer config).
_PAT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_lock = threading.Lock()
_encoding: tiktoken.Encoding | None = None


def _load() -> tiktoken.Encoding:
    global _encoding
    with _lock:
        if _encoding is None:
            ranks: dict[bytes, int] = {}
            vocab = resources.files("dashscope") / "resources" / "qwen.tiktoken"
            for line in vocab.read_bytes().splitlines():
                if line.strip():
                    token, rank = line.split()
                    ranks[base64.b64decode(token)] = int(rank)
            _encoding = tiktoken.Encoding(
                "qwen", pat_str=_PAT, mergeable_ranks=ranks, special_tokens={}
            )
        return _encoding


def warm_up() -> None:
    """Load the vocabulary ahead of the first request (it takes about a second)."""
    _load()


def count_tokens(text: str) -> int:
    return len(_load().encode(text, disallowed_special=()))


def check_prompt(prompt: str | None) -> str:
    """The prompt, trimmed, or an InputError saying what is wrong and what is allowed."""
    text = (prompt or "").strip()
    if not text:
        raise InputError("prompt_empty", "The prompt is empty: describe the edit you want.")
    if "\x00" in text:
        raise InputError("prompt_invalid", "The prompt contains a NUL character.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            "prompt_invalid", "The prompt is not valid Unicode text (it has a lone surrogate)."
        ) from None
    tokens = count_tokens(text)
    if tokens > MAX_PROMPT_TOKENS:
        raise InputError(
            "prompt_too_long",
            f"The prompt is {tokens} tokens long; the limit is {MAX_PROMPT_TOKENS} tokens.",
        )
    return text
