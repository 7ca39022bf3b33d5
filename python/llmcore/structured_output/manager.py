"""Grammars for the engine core: compiled off the step loop, cached, one matcher per sequence,
and the bitmask of a batch filled on the host.

A request asking for guided decoding gets a `GrammarHandle` at once (the spec is checked
synchronously: a bad spec is a ValueError before anything is queued); its grammar compiles
in a thread pool while the core keeps stepping other requests. Compiled grammars are cached
by (backend, spec), so a repeated schema costs nothing. A compile that fails, or is still
running after `compile_timeout_s`, fails its request with a ValueError naming the field.

Per step (the engine core's pipelined loop): `feed` advances the matchers by the last
step's tokens, `start_fill` starts the next mask and `PendingMask.result` collects it. For
xgrammar both run on a native thread, without the GIL, while the loop launches the forward
(`feed` reads the verdicts from the mask each token was sampled under and defers the
accepts into the fill's job); the other backends work on the calling thread.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from llmcore.config.engine_config import StructuredOutputConfig
from llmcore.structured_output.backend import (GrammarMatcher, StructuredOutputBackend, VocabInfo,
                                               bitmask_width, get_backend_class)
from llmcore.structured_output.spec import GrammarSpec, spec_from_params


@dataclass
class GrammarHandle:
    """One request's grammar: compiling or compiled."""

    backend: str
    spec: GrammarSpec
    future: cf.Future
    deadline: float                  # time.monotonic() past which a pending compile fails


class PendingMask:
    """A step's grammar bitmask being filled (StructuredOutputManager.start_fill)."""

    def __init__(self, bitmask: np.ndarray):
        self.bitmask = bitmask
        self.jobs: list = []              # backends' fills still running

    def result(self) -> np.ndarray:
        """The filled bitmask; RuntimeError if a backend's fill failed."""
        jobs, self.jobs = self.jobs, []
        errors = []
        for job in jobs:
            try:
                job.wait()
            except Exception as e:  # noqa: BLE001 - every job is waited for first
                errors.append(e)
        if errors:
            raise errors[0]
        return self.bitmask

    def wait(self) -> None:
        """Wait for every fill and drop any error (a step that is failing anyway)."""
        try:
            self.result()
        except Exception:  # noqa: BLE001
            pass


class StructuredOutputManager:
    def __init__(self, config: StructuredOutputConfig, load_tokenizer: Callable[[], Any],
                 vocab_size: int, stop_token_ids: list):
        self.config = config
        self.vocab_size = vocab_size
        self.width = bitmask_width(vocab_size)
        self._load_tokenizer = load_tokenizer
        self._stop_ids = [int(t) for t in stop_token_ids if t is not None]
        self._vocab: Optional[VocabInfo] = None
        self._stop_set: frozenset = frozenset()   # the vocabulary's, once it is built
        self._backends: dict[str, StructuredOutputBackend] = {}
        self._lock = threading.Lock()          # backends and the vocabulary are built once
        self._cache: collections.OrderedDict = collections.OrderedDict()  # key -> Future
        self._pool: Optional[cf.ThreadPoolExecutor] = None
        self._backend_of_type: dict = {}
        self._fill_threads = config.fill_threads or max(1, min(8, (os.cpu_count() or 2) // 2))

    # ------------------------------------------------------------ compiling
    def request_grammar(self, guided: Any) -> GrammarHandle:
        """Check the spec (ValueError naming the field) and start compiling it."""
        spec = spec_from_params(guided)
        name = (guided.backend or self.config.backend).split(":", 1)[0]
        get_backend_class(name)  # an unknown name fails here, not in the pool
        key = (name, spec.key)
        fut = self._cache.get(key)
        if fut is None or (fut.done() and fut.exception() is not None):
            if self._pool is None:
                self._pool = cf.ThreadPoolExecutor(self.config.compile_threads,
                                                   thread_name_prefix="llmcore-grammar")
            fut = self._pool.submit(self._compile, name, spec)
            self._cache[key] = fut
            while len(self._cache) > self.config.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return GrammarHandle(name, spec, fut, time.monotonic() + self.config.compile_timeout_s)

    def ready(self, handle: GrammarHandle) -> bool:
        """True once compiled; False while compiling; ValueError if it failed or timed out."""
        fut = handle.future
        if fut.done():
            err = fut.exception()
            if err is not None:
                msg = str(err) if isinstance(err, ValueError) else \
                    f"guided_decoding.{handle.spec.kind}: {type(err).__name__}: {err}"
                raise ValueError(msg)
            return True
        if time.monotonic() > handle.deadline:
            raise ValueError(f"guided_decoding.{handle.spec.kind} is too complex: compiling it "
                             f"took longer than {self.config.compile_timeout_s:g} s")
        return False

    def wait_any(self, handles: list, timeout: float) -> None:
        """Block until one of the handles' compiles ends (or `timeout` s): an idle core
        waits here instead of spinning."""
        cf.wait([h.future for h in handles], timeout=timeout, return_when=cf.FIRST_COMPLETED)

    def _compile(self, name: str, spec: GrammarSpec) -> Any:
        return self._backend(name).compile(spec)

    def _backend(self, name: str) -> StructuredOutputBackend:
        with self._lock:
            backend = self._backends.get(name)
            if backend is None:
                if self._vocab is None:
                    tok = self._load_tokenizer()
                    if tok is None:
                        raise ValueError("guided decoding needs the model's tokenizer")
                    stop = self._stop_ids or [tok.eos_token_id]
                    self._vocab = VocabInfo(tok, self.vocab_size, stop)
                    self._stop_set = frozenset(int(t) for t in stop if t is not None)
                backend = get_backend_class(name)(self._vocab, fill_threads=self._fill_threads)
                self._backends[name] = backend
            return backend

    # ------------------------------------------------------------ per sequence
    def new_matcher(self, handle: GrammarHandle) -> GrammarMatcher:
        backend = self._backends[handle.backend]
        matcher = backend.new_matcher(handle.future.result())
        self._backend_of_type[type(matcher)] = backend   # who fills its rows in a batch
        return matcher

    def fill_bitmask(self, matchers: list) -> np.ndarray:
        """int32 [len(matchers), width]: row i allows what matchers[i] allows next; a None
        matcher (a sequence that stopped while its row was in flight) allows everything.
        Each backend fills its rows in one batched call, on this thread."""
        self.flush_accepts()
        bitmask, groups = self._layout(matchers)
        for ms, rows in groups:
            self._backend_of(ms[0]).fill_bitmask_batch(ms, bitmask, rows)
        return bitmask

    def start_fill(self, matchers: list) -> "PendingMask":
        """fill_bitmask, with the rows of a backend that can fill off this thread (xgrammar:
        a native thread, without the GIL) still filling when it returns, so that the step's
        other host work runs meanwhile. Nothing may touch these matchers until the result
        (or wait) returns."""
        bitmask, groups = self._layout(matchers)
        pending = PendingMask(bitmask)
        try:
            for ms, rows in groups:
                backend = self._backend_of(ms[0])
                job = backend.start_fill_batch(ms, bitmask, rows)
                if job is None:
                    backend.fill_bitmask_batch(ms, bitmask, rows)
                else:
                    pending.jobs.append(job)
            # accepts fed to a backend with no rows in this fill: now, before anything else
            # (a started fill took its own backend's)
            self.flush_accepts()
        except BaseException:
            pending.wait()
            raise
        return pending

    def _layout(self, matchers: list) -> tuple:
        """A zeroed bitmask with the None rows allowing everything, and the other rows
        grouped by backend: [(matchers, rows)]."""
        bitmask = np.zeros((len(matchers), self.width), dtype=np.int32)
        groups: dict = {}
        for i, m in enumerate(matchers):
            if m is None:
                bitmask[i] = -1
            else:
                group = groups.get(type(m))
                if group is None:
                    group = groups[type(m)] = ([], [])
                group[0].append(m)
                group[1].append(i)
        return bitmask, list(groups.values())

    def feed(self, matchers: list, tokens: list, allowed: list) -> list:
        """accept_tokens for tokens sampled under a mask: allowed[i] says whether tokens[i]'s
        bit was set in the row it was sampled under. A backend whose masks are exact
        (xgrammar) takes the verdicts from the mask, and its accepts run with the next
        start_fill, off this thread; other backends accept here."""
        out = [None] * len(matchers)
        stop = self._stop_set
        groups: dict = {}
        for i, m in enumerate(matchers):
            groups.setdefault(type(m), []).append(i)
        for idx in groups.values():
            ok = [i for i in idx if allowed[i]]
            if self._backend_of(matchers[idx[0]]).defer_accepts(
                    [matchers[i] for i in ok], [tokens[i] for i in ok]):
                for i in idx:
                    out[i] = (True, tokens[i] in stop) if allowed[i] else (False, False)
            else:   # (no flush: another backend's deferred accepts are other matchers')
                for i, v in zip(idx, self._accept_now([matchers[i] for i in idx],
                                                      [tokens[i] for i in idx])):
                    out[i] = v
        return out

    def flush_accepts(self) -> None:
        """Run every backend's deferred accepts (feed) now."""
        for backend in list(self._backends.values()):   # (a compile may add one)
            backend.flush_accepts()

    def accept_tokens(self, matchers: list, tokens: list) -> list:
        """Advance each matcher by its sampled token: (accepted, terminated) per matcher. A
        grammar terminates only on accepting a stop token, so only those ask the matcher
        (a call saved per token)."""
        self.flush_accepts()
        return self._accept_now(matchers, tokens)

    def _accept_now(self, matchers: list, tokens: list) -> list:
        stop = self._stop_set
        out = []
        for m, tok in zip(matchers, tokens):
            ok = m.accept_token(tok)
            out.append((ok, ok and tok in stop and m.is_terminated()))
        return out

    def _backend_of(self, matcher: GrammarMatcher) -> StructuredOutputBackend:
        return self._backend_of_type[type(matcher)]

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
