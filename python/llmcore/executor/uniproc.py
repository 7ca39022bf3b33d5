"""One worker in this process (one device)."""

from __future__ import annotations

from typing import Any, Optional

from llmcore.executor.base import Executor
from llmcore.model_runner.step_io import PendingRunnerOutput, StepInput
from llmcore.worker.worker import Worker


class UniProcExecutor(Executor):
    def _init_executor(self) -> None:
        self.worker = Worker(self.config, rank=0, local_rank=0, eos_token_id=self.eos_token_id)
        self.worker.init_device()
        self.worker.load_model()

    def collective_rpc(self, method: str, args: tuple = (), kwargs: Optional[dict] = None
                       ) -> list[Any]:
        return [getattr(self.worker, method)(*args, **(kwargs or {}))]

    supports_deferred_sampling = True

    def execute_model(self, step: StepInput) -> PendingRunnerOutput:
        # called every step: no getattr dispatch
        return self.worker.execute_model(step)

    def sample_deferred(self, grammar_bitmask, grammar_rows) -> PendingRunnerOutput:
        return self.worker.sample_deferred(grammar_bitmask, grammar_rows)
