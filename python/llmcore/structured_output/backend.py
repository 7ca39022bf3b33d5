"""The one interface every structured-output backend implements, and the registry by name.

A backend compiles a `GrammarSpec` once (the result is shared by every request with the
same spec) and makes a `GrammarMatcher` per sequence from it. Per step the engine asks
each live matcher to fill its row of a token bitmask (int32 words, bit i of word j allows
token 32 * j + i: xgrammar's layout), then advances it with the sampled token. Rollback
exists for speculative decoding (rejected draft tokens).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from llmcore.structured_output.spec import GrammarSpec


class GrammarCompileError(ValueError):
    """The spec is well-formed for the front end but this backend cannot compile it."""


@dataclass
class VocabInfo:
    """What a backend needs to know of the model's vocabulary (passed explicitly)."""

    tokenizer: Any                  # a transformers tokenizer (HF folder or GGUF)
    vocab_size: int                 # width of the logits (may exceed the tokenizer's: padding)
    stop_token_ids: list = field(default_factory=list)   # EOS ids, allowed when complete

    @property
    def bitmask_width(self) -> int:
        return bitmask_width(self.vocab_size)


def bitmask_width(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


class GrammarMatcher(ABC):
    """One sequence's position in a compiled grammar."""

    @abstractmethod
    def accept_token(self, token_id: int) -> bool:
        """Advance by one token; False (state unchanged) if the grammar does not allow it."""

    @abstractmethod
    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        """Write the tokens allowed next into bitmask[row] (int32 [rows, width]); words the
        backend does not know (a padded vocabulary) must be left at 0 by the caller."""

    @abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undo the last `num_tokens` accepted tokens."""

    @abstractmethod
    def is_terminated(self) -> bool:
        """The grammar is complete and a stop token was accepted: nothing may follow."""


class StructuredOutputBackend(ABC):
    name: str = ""

    def __init__(self, vocab: VocabInfo, fill_threads: int = 1):
        self.vocab = vocab
        self.fill_threads = fill_threads   # for a backend with a multi-threaded batch fill

    @abstractmethod
    def compile(self, spec: GrammarSpec) -> Any:
        """The compiled grammar (thread-safe to share); GrammarCompileError when it cannot."""

    @abstractmethod
    def new_matcher(self, compiled: Any) -> GrammarMatcher:
        """A fresh matcher at the grammar's start."""

    def fill_bitmask_batch(self, matchers: list, bitmask: np.ndarray, rows: list) -> None:
        """bitmask[rows[i]] = what matchers[i] (this backend's) allows next. Row by row here;
        a backend with a batched, multi-threaded fill overrides it."""
        for m, r in zip(matchers, rows):
            m.fill_bitmask(bitmask, r)

    def defer_accepts(self, matchers: list, tokens: list) -> bool:
        """Queue accepts of tokens each grammar is known to allow (they were sampled under
        its exact mask), to run with the next start_fill_batch, before its fill and off
        the calling thread; False where the backend cannot (the caller accepts now)."""
        return False

    def flush_accepts(self) -> None:
        """Run queued accepts now: before any other use of their matchers."""

    def start_fill_batch(self, matchers: list, bitmask: np.ndarray, rows: list
                         ) -> Optional["FillJob"]:
        """fill_bitmask_batch, started off the calling thread without the GIL (the caller
        runs meanwhile and touches neither these matchers nor bitmask until the job's
        wait()); None where the backend cannot, and the caller fills synchronously."""
        return None


class FillJob(ABC):
    """A started start_fill_batch."""

    @abstractmethod
    def wait(self) -> None:
        """Block until the fill is done; RuntimeError if it failed."""


# name -> "module:Class", imported on first use (each backend pulls in its library)
_REGISTRY = {
    "xgrammar": "llmcore.structured_output.xgrammar_backend:XGrammarBackend",
    "outlines": "llmcore.structured_output.outlines_backend:OutlinesBackend",
    "lm-format-enforcer": "llmcore.structured_output.lmfe_backend:LMFormatEnforcerBackend",
}


def backend_names() -> tuple:
    return tuple(_REGISTRY)


def get_backend_class(name: str) -> type:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown guided decoding backend {name!r}; one of "
                         f"{', '.join(_REGISTRY)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def allow_token(row: np.ndarray, token_id: int) -> None:
    """Set token_id's bit in one int32 bitmask row."""
    row.view(np.uint32)[token_id >> 5] |= np.uint32(1 << (token_id & 31))
