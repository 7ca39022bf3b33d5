"""Streamed deltas from the engine's cumulative RequestOutput snapshots, for both front ends.

Engine outputs carry each choice's whole text and token list so far; a stream sends only
what is new since that choice's previous chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class ChoiceDelta:
    """What one streamed choice gained since its previous chunk."""
    text: str
    token_ids: list
    logprobs: list          # the per-token logprob entries of token_ids
    first: bool             # this is the choice's first chunk
    finished: bool = False  # the choice finished with this delta


class StreamDeltas:
    """Tracks, per choice index, how much text / how many tokens were sent, the generated
    token counts for usage, and which choices have finished (nothing more is sent for them)."""

    def __init__(self) -> None:
        self._text: dict[int, int] = {}
        self._tokens: dict[int, int] = {}
        self._finished: set[int] = set()

    def advance(self, idx: int, output: Any) -> Optional[ChoiceDelta]:
        """Choice `idx`'s delta given its latest output; None once it has finished."""
        if idx in self._finished:
            return None
        # Slice only the new tail: outputs are cumulative, so copying them whole would make a
        # stream quadratic in its length.
        text = output.text or ""
        start = self._tokens.get(idx, 0)
        delta = ChoiceDelta(text=text[self._text.get(idx, 0):],
                            token_ids=list(output.token_ids[start:]),
                            logprobs=list(output.logprobs[start:]) if output.logprobs else [],
                            first=idx not in self._text,
                            finished=output.finish_reason is not None)
        self._text[idx] = len(text)
        self._tokens[idx] = len(output.token_ids)
        if delta.finished:
            self._finished.add(idx)
        return delta

    @property
    def completion_tokens(self) -> int:
        return sum(self._tokens.values())
