"""A token-level fake of EngineCore for the IPC tests: no model, deterministic tokens.

Each step gives every running request one token, `prompt[-1] + number of tokens so far
+ 1`, with logprob -0.5 (and top-k logprobs when the request asks), and finishes it with
"length" at max_tokens. It keeps count of what it holds so tests can check leftovers.
"""

from __future__ import annotations

import os
import time
from typing import Optional

from llmcore.engine.core_types import (
    EngineCoreOutput,
    EngineCoreOutputs,
    EngineCoreRequest,
    PositionLogprobs,
    SchedulerStats,
)


class FakeEngineCore:
    def __init__(self, num_blocks: int = 64, fail_with: Optional[str] = None):
        if fail_with is not None:
            raise RuntimeError(fail_with)
        self.num_blocks = num_blocks
        self.running: dict[str, tuple[EngineCoreRequest, list[int]]] = {}
        self.num_aborted = 0
        self.num_finished = 0
        self.num_steps = 0

    def ready_info(self) -> dict:
        return {"num_gpu_blocks": self.num_blocks, "model": "fake"}

    def add_request(self, req: EngineCoreRequest) -> None:
        if not req.prompt_token_ids:
            raise ValueError(f"request {req.request_id}: the prompt is empty")
        if req.request_id in self.running:
            raise ValueError(f"request {req.request_id}: duplicate request id")
        self.running[req.request_id] = (req, [])

    def abort_requests(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            if self.running.pop(rid, None) is not None:
                self.num_aborted += 1

    def has_unfinished_requests(self) -> bool:
        return bool(self.running)

    def step(self) -> EngineCoreOutputs:
        self.num_steps += 1
        outputs = []
        for rid, (req, generated) in list(self.running.items()):
            token = req.prompt_token_ids[-1] + len(generated) + 1
            generated.append(token)
            out = EngineCoreOutput(request_id=rid, new_token_ids=[token],
                                   new_token_logprobs=[-0.5])
            k = req.sampling_params.logprobs
            if k:
                out.new_logprobs = PositionLogprobs(
                    token_ids=[token], logprobs=[-0.5], ranks=[1],
                    topk_ids=[[token + i for i in range(k)]],
                    topk_logprobs=[[-0.5 - i for i in range(k)]])
            if len(generated) >= req.max_tokens:
                out.finish_reason = "length"
                del self.running[rid]
                self.num_finished += 1
            outputs.append(out)
        return EngineCoreOutputs(outputs=outputs, stats=self.get_stats(),
                                 timestamp=time.time())

    # ---------------------------------------------------------------- utilities
    def get_stats(self) -> SchedulerStats:
        return SchedulerStats(num_running=len(self.running), num_total_blocks=self.num_blocks,
                              num_free_blocks=self.num_blocks)

    def ping(self) -> str:
        return "pong"

    def echo(self, *args):
        return list(args)

    def fail(self, message: str) -> None:
        raise ValueError(message)

    def leftovers(self) -> dict:
        return {"running": len(self.running), "aborted": self.num_aborted,
                "finished": self.num_finished}

    def pid(self) -> int:
        return os.getpid()

    def shutdown(self) -> None:
        self.running.clear()
