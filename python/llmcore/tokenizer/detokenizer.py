"""Incremental detokenization (vLLM `detokenize_incrementally` style).

Each `append(token_id)` decodes only a small window of token ids
``ids[prefix_offset:]`` and compares it with the decode of ``ids[prefix_offset:read_offset]``
(the window that was already emitted); the difference is the new text. After an
emission the window slides (prefix_offset <- read_offset, read_offset <- len), so the
work per token is O(window), independent of the output length.

Text is held back while the decoded window ends in U+FFFD (an incomplete multi-byte
UTF-8 character split over tokens), so a delta never contains half a character. Call
`flush()` (or `append(..., final=True)`) when the sequence finishes to release text
still held (e.g. a genuinely invalid trailing byte, decoded as U+FFFD).

Invariant: ``self.text == tokenizer.decode(self.output_token_ids,
skip_special_tokens=...)`` after `flush()`; before it, self.text is a prefix of that.
The windows start inside the output (the prompt is not used as decoding context), which
is what makes the invariant exact: for SentencePiece tokenizers the first output token's
leading space is therefore stripped exactly as ``tokenizer.decode`` does.
`spaces_between_special_tokens` only matters for slow tokenizers, where it is passed
through to ``decode``.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

_REPLACEMENT = "\ufffd"


def backend_decoder(tokenizer, skip_special_tokens: bool) -> Optional[Callable[[List[int]], str]]:
    """The Rust `tokenizers.Tokenizer.decode` of a fast tokenizer, when
    ``tokenizer.decode(ids, skip_special_tokens=s, clean_up_tokenization_spaces=False)`` is
    exactly that call (the class overrides neither ``decode`` nor ``_decode``). The
    transformers wrapper around it costs several times the decode itself, and a generated
    token takes two decodes, so at hundreds of sequences per step it is a large share of
    the engine's host time."""
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers import tokenization_utils_tokenizers as fast_mod
    except ImportError:
        return None
    base_decodes = {getattr(getattr(fast_mod, name, None), "_decode", None)
                    for name in ("PreTrainedTokenizerFast", "TokenizersBackend")} - {None}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    cls = type(tokenizer)
    if (not getattr(tokenizer, "is_fast", False) or backend is None
            or getattr(cls, "decode", None) is not PreTrainedTokenizerBase.decode
            or getattr(cls, "_decode", None) not in base_decodes):
        return None
    return lambda ids: backend.decode(ids, skip_special_tokens=skip_special_tokens)


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: Optional[Sequence[int]] = None,
                 skip_special_tokens: bool = True, spaces_between_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.prompt_token_ids = prompt_token_ids
        self.skip_special_tokens = skip_special_tokens
        self.spaces_between_special_tokens = spaces_between_special_tokens
        self.output_token_ids: List[int] = []
        self.text = ""
        self.prefix_offset = 0
        self.read_offset = 0
        self._prefix_text = ""  # decode(ids[prefix_offset:read_offset])
        kwargs = {"skip_special_tokens": skip_special_tokens,
                  "clean_up_tokenization_spaces": False}
        if not getattr(tokenizer, "is_fast", True):
            kwargs["spaces_between_special_tokens"] = spaces_between_special_tokens
        self._kwargs = kwargs
        self._backend_decode = backend_decoder(tokenizer, skip_special_tokens)

    def _decode(self, ids: List[int]) -> str:
        if not ids:
            return ""
        if self._backend_decode is not None:
            return self._backend_decode(ids)
        return self.tokenizer.decode(ids, **self._kwargs)

    def append(self, token_id: int, final: bool = False) -> str:
        """Add one generated token; return the newly completed text (may be "")."""
        token_id = int(token_id)
        self.output_token_ids.append(token_id)
        window = self.output_token_ids[self.prefix_offset:]
        new_text = self._decode(window)
        prefix_text = self._prefix_text
        if not final and (len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT)):
            return ""  # nothing new yet, or an incomplete character at the end
        delta = new_text[len(prefix_text):]
        self.text += delta
        # Slide the window: the text of ids[read_offset:] is now emitted.
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.output_token_ids)
        self._prefix_text = self._decode(self.output_token_ids[self.prefix_offset:self.read_offset]) \
            if self.prefix_offset else new_text
        return delta

    def extend(self, token_ids: Sequence[int]) -> str:
        return "".join(self.append(t) for t in token_ids)

    def flush(self) -> str:
        """Release held-back text (call once the sequence is finished)."""
        if self.read_offset == len(self.output_token_ids):
            return ""
        window = self.output_token_ids[self.prefix_offset:]
        new_text = self._decode(window)
        delta = new_text[len(self._prefix_text):]
        self.text += delta
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.output_token_ids)
        self._prefix_text = self._decode(self.output_token_ids[self.prefix_offset:self.read_offset])
        return delta

    @property
    def num_held_tokens(self) -> int:
        return len(self.output_token_ids) - self.read_offset


def token_decoder(tokenizer) -> Callable[[int], str]:
    """`token_id -> tokenizer.decode([token_id])`, the text of one token (for
    Logprob.decoded_token, vLLM style), through the Rust decode when that is the same call
    (the tokenizer does not clean up tokenization spaces by default)."""
    fast = None
    if not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        fast = backend_decoder(tokenizer, skip_special_tokens=False)
    if fast is not None:
        return lambda token_id: fast([token_id])
    return lambda token_id: tokenizer.decode([token_id])
