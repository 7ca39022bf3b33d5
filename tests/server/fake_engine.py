"""A small fake EngineClient for front-end tests that need control over the engine
(a dead engine loop, slow steps) without loading a model.

Byte-level "tokenizer" (ids 0..255 are bytes, 256 = EOS); generation is a deterministic
function of the previous token. Uses the real SamplingParams / RequestOutput classes.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator, Optional

from llmcore.engine.protocol import EngineStats, ServedModelInfo
from llmcore.metrics import EngineMetrics
from llmcore.outputs import CompletionOutput, Logprob, RequestOutput

SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


class ByteTokenizer:
    bos_token = ""
    eos_token = "</s>"
    eos_token_id = 256

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class FakeEngine:
    def __init__(self, max_model_len: int = 512, step_delay: float = 0.005, names=("fake",)):
        self.model_info = ServedModelInfo(served_model_names=list(names), model_path="/fake/model",
                                          max_model_len=max_model_len, vocab_size=257,
                                          dtype="float32", block_size=16, max_logprobs=20)
        self.tokenizer = ByteTokenizer()
        self.chat_template = SMOL_TEMPLATE
        self.metrics = EngineMetrics(names[0])
        self.step_delay = step_delay
        self.running: set[str] = set()
        self.aborted: list[str] = []
        self.calls: list = []   # (request_id, SamplingParams, priority) per generate()
        self._dead = False
        self._error: Optional[BaseException] = None
        self._death_waiters: list = []  # (event loop, future)
        self._lock = threading.Lock()

    def kill(self, error: Optional[BaseException] = None) -> None:
        """Die now (from any thread): in-flight generations fail at their next step and
        wait_for_death returns `error`."""
        with self._lock:
            self._dead = True
            self._error = error or RuntimeError("engine loop died (killed by the test)")
            waiters, self._death_waiters = self._death_waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(lambda f=fut: f.done() or f.set_result(self._error))

    async def wait_for_death(self) -> BaseException:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            if self._dead:
                return self._error
            self._death_waiters.append((loop, fut))
        return await fut

    @property
    def errored(self) -> bool:
        return self._dead

    async def check_health(self) -> None:
        if self._dead:
            raise RuntimeError("engine loop is dead")

    def get_stats(self) -> EngineStats:
        return EngineStats(num_running=len(self.running),
                           kv_cache_usage=min(1.0, 0.01 * len(self.running)),
                           num_total_blocks=100, num_free_blocks=100 - len(self.running))

    async def abort(self, request_id: str) -> None:
        if request_id in self.running:
            self.running.discard(request_id)
            self.aborted.append(request_id)

    def shutdown(self) -> None:
        pass

    def generate(self, prompt: Any, sampling_params: Any, request_id: str,
                 priority: int = 0) -> AsyncIterator:
        self.calls.append((request_id, sampling_params, priority))
        if self._dead:
            raise RuntimeError("engine loop is dead")
        if isinstance(prompt, dict):
            ids = list(prompt.get("prompt_token_ids") or self.tokenizer.encode(prompt["prompt"]))
            text: Optional[str] = prompt.get("prompt")
        elif isinstance(prompt, str):
            ids, text = self.tokenizer.encode(prompt), prompt
        else:
            ids, text = list(prompt), None
        if not ids:
            raise ValueError("prompt: the prompt is empty")
        if len(ids) > self.model_info.max_model_len:
            raise ValueError("prompt: too long")
        return self._run(request_id, text, ids, sampling_params)

    async def _run(self, request_id, text, ids, sp) -> AsyncIterator[RequestOutput]:
        self.running.add(request_id)
        n = sp.n
        outs = [CompletionOutput(index=i, text="", token_ids=[], cumulative_logprob=0.0,
                                 logprobs=[] if sp.logprobs is not None else None)
                for i in range(n)]
        finished = False
        try:
            for step in range(sp.max_tokens):
                await asyncio.sleep(self.step_delay)
                if self._dead:
                    raise RuntimeError("engine loop died")
                for o in outs:
                    if o.finish_reason is not None:
                        continue
                    prev = o.token_ids[-1] if o.token_ids else ids[-1]
                    tok = 97 + (prev * 7 + o.index + step) % 26
                    o.token_ids = list(o.token_ids) + [tok]
                    o.text = self.tokenizer.decode(o.token_ids)
                    if o.logprobs is not None:
                        d = {tok: Logprob(-0.5, 1, chr(tok))}
                        for k in range(sp.logprobs):
                            alt = 65 + k
                            d.setdefault(alt, Logprob(-2.0 - k, k + 2, chr(alt)))
                        o.logprobs = list(o.logprobs) + [d]
                    for s in sp.stop or []:
                        if s and s in o.text:
                            o.text = o.text[: o.text.index(s)]
                            o.finish_reason, o.stop_reason = "stop", s
                    if o.finish_reason is None and len(o.token_ids) >= sp.max_tokens:
                        o.finish_reason = "length"
                finished = all(o.finish_reason is not None for o in outs)
                yield RequestOutput(request_id=request_id, prompt=text, prompt_token_ids=ids,
                                    prompt_logprobs=None,
                                    outputs=[CompletionOutput(o.index, o.text, list(o.token_ids),
                                                              o.cumulative_logprob,
                                                              None if o.logprobs is None else
                                                              list(o.logprobs), o.finish_reason,
                                                              o.stop_reason) for o in outs],
                                    finished=finished)
                if finished:
                    return
        finally:
            if not finished:
                await self.abort(request_id)
            self.running.discard(request_id)
