"""xgrammar: grammars compiled to a pushdown automaton with a per-state token-mask cache;
the fastest mask fill of the three (a few microseconds a row)."""

from __future__ import annotations

import json
import logging
from typing import Any, Optional

import numpy as np

from llmcore.structured_output.backend import (FillJob, GrammarCompileError, GrammarMatcher,
                                               StructuredOutputBackend, VocabInfo)
from llmcore.structured_output.spec import GrammarSpec

logger = logging.getLogger(__name__)


class XGrammarMatcher(GrammarMatcher):
    __slots__ = ("_m", "_accept")

    def __init__(self, matcher: Any):
        self._m = matcher
        # the FFI method itself: xgrammar's Python wrapper around it costs as much again
        self._accept = matcher._handle.accept_token

    def accept_token(self, token_id: int) -> bool:
        return bool(self._accept(int(token_id), False))

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        self._m.fill_next_token_bitmask(bitmask, row)

    def rollback(self, num_tokens: int) -> None:
        self._m.rollback(int(num_tokens))

    def is_terminated(self) -> bool:
        return bool(self._m.is_terminated())


class XGrammarBackend(StructuredOutputBackend):
    name = "xgrammar"

    def __init__(self, vocab: VocabInfo, fill_threads: int = 1):
        super().__init__(vocab, fill_threads)
        import xgrammar as xgr
        self._xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(vocab.tokenizer, vocab_size=vocab.vocab_size,
                                                  stop_token_ids=list(vocab.stop_token_ids) or None)
        # one compiler thread per call: the manager runs several compiles at once
        self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        # the step's rows filled by C++ threads in one call (no Python per row)
        self._batch = xgr.BatchGrammarMatcher(max_threads=max(1, int(fill_threads)))
        self._native = None               # _NativeBatchFill once tried; False: none here
        self._deferred: tuple = ([], [])  # (xgrammar matchers, tokens) to accept first

    def compile(self, spec: GrammarSpec) -> Any:
        c = self._compiler
        try:
            if spec.kind == "json":
                # no free whitespace between JSON tokens (a small model otherwise fills
                # max_tokens with newlines); strict: no properties beyond the schema's
                return c.compile_json_schema(spec.value, any_whitespace=False)
            if spec.kind == "json_object":
                return c.compile_builtin_json_grammar()
            if spec.kind == "regex":
                return c.compile_regex(spec.value)
            if spec.kind == "choice":
                ebnf = "root ::= " + " | ".join(json.dumps(ch) for ch in spec.value)
                return c.compile_grammar(ebnf)
            return c.compile_grammar(spec.value)
        except Exception as e:  # noqa: BLE001 - xgrammar raises RuntimeError/ValueError
            msg = str(e).strip().splitlines()
            raise GrammarCompileError(f"guided_decoding.{spec.kind}: xgrammar cannot compile it: "
                                      f"{msg[-1] if msg else type(e).__name__}") from None

    def new_matcher(self, compiled: Any) -> GrammarMatcher:
        return XGrammarMatcher(self._xgr.GrammarMatcher(compiled))  # rollback is unlimited

    def fill_bitmask_batch(self, matchers: list, bitmask: np.ndarray, rows: list) -> None:
        self.flush_accepts()
        self._batch.batch_fill_next_token_bitmask([m._m for m in matchers], bitmask,
                                                  [int(r) for r in rows])

    def _native_fill(self):
        """The native fill, made on first use; False where there is none."""
        if self._native is None:
            self._native = _NativeBatchFill.create(self._batch)
        return self._native

    def defer_accepts(self, matchers: list, tokens: list) -> bool:
        if not self._native_fill():
            return False
        self._deferred[0].extend(m._m for m in matchers)
        self._deferred[1].extend(tokens)
        return True

    def flush_accepts(self) -> None:
        if self._deferred[0]:
            ms, toks = self._deferred
            self._deferred = ([], [])
            self._xgr.BatchGrammarMatcher.batch_accept_token(ms, toks)

    def start_fill_batch(self, matchers: list, bitmask: np.ndarray, rows: list
                         ) -> Optional[FillJob]:
        native = self._native_fill()
        if not native or native.pending:
            return None   # no native thread here, or one fill is out already: fill inline
        accepts, self._deferred = self._deferred, ([], [])
        return native.start([m._m for m in matchers], bitmask, rows, accepts)


class _NativeBatchFill(FillJob):
    """xgrammar's batch fill called on a native thread (llmcore._core.FfiCallThread,
    through tvm-ffi's C ABI). xgrammar fills without the GIL either way, but a Python
    thread would first have to take the GIL from the busy step loop (every 5 ms at most):
    a native thread starts at once, and the fill runs while the loop launches the next
    forward and processes the last step's tokens."""

    def __init__(self, batch: Any, fill: Any, accept: Any, thread: Any):
        import tvm_ffi
        self._tvm_ffi = tvm_ffi
        self._batch, self._fill, self._accept, self._thread = batch, fill, accept, thread
        self._args = None                 # alive until wait(): the thread reads them

    @classmethod
    def create(cls, batch: Any):
        """The native fill of `batch` (an xgrammar.BatchGrammarMatcher), or False where
        this build or this xgrammar has none."""
        try:
            import tvm_ffi

            from llmcore import _core
            methods = {m.name: m.func for m in type(batch._handle).__tvm_ffi_type_info__.methods}
            fill = methods["batch_fill_next_token_bitmask"]
            accept = methods["batch_accept_token"]
            thread = _core.FfiCallThread(tvm_ffi.libinfo.find_libtvm_ffi())
        except Exception as e:  # noqa: BLE001 - any mismatch: the Python call, inline
            logger.info("xgrammar mask fill stays on the step loop's thread (%s: %s)",
                        type(e).__name__, e)
            return False
        return cls(batch, fill, accept, thread)

    @property
    def pending(self) -> bool:
        return self._args is not None

    def start(self, matchers: list, bitmask: np.ndarray, rows: list,
              accepts: tuple = ((), ())) -> "_NativeBatchFill":
        """Fill bitmask[rows] from matchers (xgrammar's), after accepting accepts' tokens
        (matchers, tokens) when there are any."""
        ffi = self._tvm_ffi
        calls = []
        if accepts[0]:   # (the static batch_accept_token: matchers, tokens, no debug print)
            calls.append((self._accept, [ffi.convert([m._handle for m in accepts[0]]),
                                         ffi.convert([int(t) for t in accepts[1]]), False]))
        # (the arguments xgrammar's Python wrapper would pass: its batch object, an array
        # of matchers, the bitmask as a tensor, the row indices, no debug print)
        calls.append((self._fill, [self._batch._handle, ffi.convert([m._handle for m in matchers]),
                                   ffi.from_dlpack(bitmask), ffi.convert([int(r) for r in rows]),
                                   False]))
        self._thread.start(calls)
        self._args = (calls, bitmask)
        return self

    def wait(self) -> None:
        if self._args is None:
            return
        err = self._thread.wait()
        self._args = None
        if err:
            raise RuntimeError(f"xgrammar's accepts and mask fill (native thread) failed: {err}")

    def __del__(self):
        # a job still running reads the arguments held here: they go only after it ends
        if getattr(self, "_args", None) is not None:
            self._thread.wait()
