"""A small EngineClient for developing the gRPC front end without a model.

It "generates" the prompt's characters back, one per step, through a char-level
tokenizer, and keeps block counts like the real engine so cancellation tests can
check that blocks are freed. Used only when LLMCORE_GRPC_FAKE_ENGINE=1; the test
suite runs against the real AsyncLLMEngine otherwise.
"""

from __future__ import annotations

import asyncio
import math
import threading

from llmcore.engine.protocol import EngineStats, ServedModelInfo
from llmcore.outputs import CompletionOutput, Logprob, RequestOutput
from llmcore.sampling_params import SamplingParams


class CharTokenizer:
    bos_token = "<s>"
    eos_token = "</s>"
    eos_token_id = 1

    def __len__(self):
        return 256

    def encode(self, text, add_special_tokens=True):
        return ([0] if add_special_tokens else []) + [min(ord(c), 255) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if not (skip_special_tokens and i in (0, 1)))

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int):
            return chr(ids)
        return [chr(i) for i in ids]


class FakeEngine:
    def __init__(self, step_s: float = 0.002, num_blocks: int = 1024, block_size: int = 16):
        self.model_info = ServedModelInfo(served_model_names=["fake-model"], model_path="/fake",
                                          max_model_len=2048, vocab_size=256, dtype="float32",
                                          block_size=block_size, max_logprobs=20)
        self.tokenizer = CharTokenizer()
        self.chat_template = ("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                              "{% if add_generation_prompt %}assistant:{% endif %}")
        self.metrics = None
        self.step_s = step_s
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.used: dict[str, int] = {}
        self.running: dict[str, asyncio.Event] = {}
        self.dead = False
        self.aborted: list[str] = []
        self.calls: list = []   # (request_id, SamplingParams, priority) per generate()
        self._error = None
        self._death_waiters: list = []  # (event loop, future)
        self._lock = threading.Lock()

    def kill(self, error=None) -> None:
        """Die now (from any thread): in-flight generations fail at their next step and
        wait_for_death returns `error`."""
        with self._lock:
            self.dead = True
            self._error = error or RuntimeError("EngineDeadError: killed by the test")
            waiters, self._death_waiters = self._death_waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(lambda f=fut: f.done() or f.set_result(self._error))

    async def wait_for_death(self) -> BaseException:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            if self.dead:
                return self._error
            self._death_waiters.append((loop, fut))
        return await fut

    @property
    def errored(self) -> bool:
        return self.dead

    async def check_health(self) -> None:
        if self.dead:
            raise RuntimeError("engine loop is dead")

    def get_stats(self) -> EngineStats:
        used = sum(self.used.values())
        return EngineStats(num_running=len(self.running), kv_cache_usage=used / self.num_blocks,
                           num_total_blocks=self.num_blocks, num_free_blocks=self.num_blocks - used)

    def shutdown(self) -> None:
        pass

    async def abort(self, request_id: str) -> None:
        ev = self.running.get(request_id)
        if ev is not None:
            ev.set()
            self.aborted.append(request_id)
        self.used.pop(request_id, None)

    def generate(self, prompt, sampling_params: SamplingParams, request_id: str,
                 priority: int = 0):
        self.calls.append((request_id, sampling_params, priority))
        if self.dead:
            raise RuntimeError("EngineDeadError")
        if isinstance(prompt, dict):
            ids = prompt.get("prompt_token_ids") or self.tokenizer.encode(prompt["prompt"])
        else:
            ids = self.tokenizer.encode(prompt)
        if request_id in self.running:
            raise ValueError(f"request_id {request_id!r} is already in use")
        self.running[request_id] = asyncio.Event()
        return self._gen(list(ids), sampling_params, request_id)

    async def _gen(self, ids, params: SamplingParams, request_id: str):
        stop = self.running[request_id]
        n = params.n
        max_tokens = params.max_tokens or 16
        body = [t for t in ids if t > 1] or [ord("x")]
        outs = [CompletionOutput(index=i, text="", token_ids=[], cumulative_logprob=0.0,
                                 logprobs=[] if params.logprobs is not None else None)
                for i in range(n)]
        finished = False
        try:
            for step in range(max_tokens):
                self.used[request_id] = math.ceil((len(ids) + step + 1) / self.block_size)
                await asyncio.sleep(self.step_s)
                if stop.is_set():
                    return
                if self.dead:
                    raise RuntimeError("EngineDeadError: the engine loop died")
                for o in outs:
                    t = body[step % len(body)]
                    o.token_ids = list(o.token_ids) + [t]
                    o.text = self.tokenizer.decode(o.token_ids)
                    o.cumulative_logprob -= 0.5
                    if o.logprobs is not None:
                        o.logprobs = list(o.logprobs) + [{t: Logprob(-0.5, 1, chr(t))}]
                    if params.stop and any(s in o.text for s in params.stop):
                        s = next(s for s in params.stop if s in o.text)
                        o.text = o.text[:o.text.index(s)]
                        o.finish_reason, o.stop_reason = "stop", s
                    elif step == max_tokens - 1:
                        o.finish_reason = "length"
                done = all(o.finish_reason for o in outs)
                yield RequestOutput(request_id=request_id, prompt=None, prompt_token_ids=ids,
                                    prompt_logprobs=None,
                                    outputs=[_copy(o) for o in outs], finished=done)
                if done:
                    finished = True
                    return
        finally:
            self.running.pop(request_id, None)
            self.used.pop(request_id, None)
            if not finished and request_id not in self.aborted:
                self.aborted.append(request_id)


def _copy(o: CompletionOutput) -> CompletionOutput:
    return CompletionOutput(index=o.index, text=o.text, token_ids=list(o.token_ids),
                            cumulative_logprob=o.cumulative_logprob,
                            logprobs=None if o.logprobs is None else list(o.logprobs),
                            finish_reason=o.finish_reason, stop_reason=o.stop_reason)
