"""What the front ends (HTTP, gRPC) print of a prompt in their request log lines."""

from __future__ import annotations

from typing import Any, Optional


def prompt_for_log(prompt: Any, max_log_len: Optional[int]) -> tuple[Optional[str], Any]:
    """(text, token ids) of a prompt for a request log line, each cut to max_log_len
    (characters of a text prompt, ids of a token-id prompt; as vLLM's --max-log-len)."""
    text: Optional[str] = None
    ids: Any = None
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, dict):
        text = prompt.get("prompt")
        ids = prompt.get("prompt_token_ids")
    elif isinstance(prompt, (list, tuple)):
        ids = prompt
    else:
        text = repr(prompt)
    if max_log_len is not None:
        if text is not None:
            text = text[:max_log_len]
        if ids is not None:
            ids = list(ids[:max_log_len])
    elif ids is not None:
        ids = list(ids)
    return text, ids
