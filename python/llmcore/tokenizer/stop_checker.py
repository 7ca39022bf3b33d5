"""Stop conditions (vLLM v0 StopChecker semantics) and streaming hold-back.

Per generated token the engine does:

    delta = detok.append(tok)                       # IncrementalDetokenizer
    res = check_stop(params, output_text=detok.text, new_char_count=len(delta),
                     last_token_id=tok, num_output_tokens=len(out_ids),
                     num_total_tokens=len(prompt_ids) + len(out_ids),
                     max_model_len=max_model_len, eos_token_id=eos)
    text = detok.text if res is None or res.truncate_to is None else detok.text[:res.truncate_to]
    if res: finish_reason, stop_reason = res.finish_reason, res.stop_reason
    # streaming: send text[:streamable_text_len(text, params, finished=res is not None)]

Order of checks: max_model_len (always), then -- only once num_output_tokens >=
min_tokens, as vLLM -- EOS (unless ignore_eos; stop_reason None), stop_token_ids
(stop_reason = the id), stop strings (stop_reason = the string), then max_tokens.
EOS / stop-token text is removed from the output (truncate_to) unless
include_stop_str_in_output. Length finishes are reported as "length".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union


@dataclass
class StopCheckResult:
    finish_reason: str                     # "stop" | "length"
    stop_reason: Union[int, str, None] = None
    truncate_to: Optional[int] = None      # if not None: output_text = output_text[:truncate_to]


def check_stop_strings(output_text: str, new_char_count: int, stop: Sequence[str],
                       include_stop_str_in_output: bool) -> Optional[Tuple[str, int]]:
    """Search for stop strings in the part of `output_text` that can contain a new
    match: the last `new_char_count + len(stop_str) - 1` characters. Returns
    (stop_str, truncate_to) with truncate_to == -1 when no truncation is needed, or
    None. The earliest match wins (ties: the longer stop string)."""
    if not new_char_count or not stop:
        return None
    n = len(output_text)
    best: Optional[Tuple[int, int, str]] = None
    for s in stop:
        start = max(0, n - new_char_count - len(s) + 1)
        i = output_text.find(s, start)
        if i == -1:
            continue
        if best is None or i < best[0] or (i == best[0] and len(s) > best[1]):
            best = (i, len(s), s)
    if best is None:
        return None
    i, ls, s = best
    if include_stop_str_in_output:
        end = i + ls
        return (s, -1) if end >= n else (s, end)
    return s, i


def check_stop(params, *, output_text: str, new_char_count: int, last_token_id: int,
               num_output_tokens: int, num_total_tokens: int, max_model_len: int,
               eos_token_id: Optional[int]) -> Optional[StopCheckResult]:
    """Return why the sequence stops after its last token, or None to continue."""
    if num_total_tokens >= max_model_len:
        return StopCheckResult("length")
    if num_output_tokens < params.min_tokens:
        return None
    if not params.ignore_eos and eos_token_id is not None and last_token_id == eos_token_id:
        trunc = None
        if new_char_count and not params.include_stop_str_in_output:
            trunc = len(output_text) - new_char_count
        return StopCheckResult("stop", None, trunc)
    if params.stop_token_ids and last_token_id in params.stop_token_ids:
        trunc = None
        if new_char_count and not params.include_stop_str_in_output:
            trunc = len(output_text) - new_char_count
        return StopCheckResult("stop", int(last_token_id), trunc)
    hit = check_stop_strings(output_text, new_char_count, params.stop,
                             params.include_stop_str_in_output)
    if hit is not None:
        s, trunc = hit
        return StopCheckResult("stop", s, None if trunc == -1 else trunc)
    if params.max_tokens is not None and num_output_tokens >= params.max_tokens:
        return StopCheckResult("length")
    return None


def stop_holdback_len(text: str, stop: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string:
    the characters a streaming front end must not send yet."""
    best = 0
    n = len(text)
    for s in stop:
        for L in range(min(len(s) - 1, n), best, -1):
            if text.endswith(s[:L]):
                best = L
                break
    return best


def streamable_text_len(text: str, params, finished: bool) -> int:
    """How much of the (already stop-truncated) output text may be streamed now.
    Holds back a possible partial stop string unless the sequence is finished or
    include_stop_str_in_output is set (then a stop string is part of the output
    anyway, as in vLLM)."""
    if finished or not params.stop or params.include_stop_str_in_output:
        return len(text)
    return len(text) - stop_holdback_len(text, params.stop)
