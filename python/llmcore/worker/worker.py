"""A Worker owns one device: its model (shard), KV cache, memory profile, CUDA graphs and
model runner. The executor drives one worker per device; the engine core never touches
them directly."""

from __future__ import annotations

import logging
from typing import Optional

import torch

from llmcore.config.engine_config import EngineConfig
from llmcore.layers.context import LayerContext, ParallelGroup
from llmcore.model_runner.model_runner import ModelRunner
from llmcore.model_runner.step_io import PendingRunnerOutput, StepInput

logger = logging.getLogger(__name__)


class Worker:
    def __init__(self, config: EngineConfig, rank: int = 0, local_rank: int = 0,
                 eos_token_id: Optional[int] = None, tp_group: Optional[ParallelGroup] = None):
        self.config = config
        self.rank, self.local_rank = rank, local_rank
        self.eos_token_id = eos_token_id
        self.tp_size = config.parallel_config.tensor_parallel_size
        if self.tp_size > 1 and tp_group is None:
            raise ValueError(f"rank {rank}: tensor-parallel size {self.tp_size} needs a tp_group")
        self.tp_group = tp_group
        self.device = config.device
        if self.device.type == "cuda" and self.device.index is None and self.tp_size > 1:
            self.device = torch.device("cuda", local_rank)
        self.runner: Optional[ModelRunner] = None

    def init_device(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device.index if self.device.index is not None
                                  else self.local_rank)
        torch.manual_seed(self.config.seed)

    def load_model(self) -> None:
        from llmcore.model_loader import get_model
        mc = self.config.model_config
        ctx = None
        if self.tp_size > 1:
            ctx = LayerContext(device=self.device, dtype=mc.dtype, tp_rank=self.rank,
                               tp_size=self.tp_size, tp_group=self.tp_group)
        model = get_model(mc, self.device, layer_context=ctx)
        self.runner = ModelRunner(model, self.config, eos_token_id=self.eos_token_id)

    def determine_num_blocks(self) -> tuple[int, int]:
        """(device KV blocks, CPU swap blocks) this worker can hold, from a profile run."""
        num_device, num_cpu = self.runner.determine_num_blocks()
        sc = self.config.scheduler_config
        if self.device.type == "cpu" and sc.preemption_mode != "swap":
            # On the CPU the KV pool already lives in host memory: a swap pool would only be
            # used by swap preemption, so don't spend --swap-space GiB on it otherwise.
            num_cpu = 0
        return num_device, num_cpu

    def initialize_cache(self, num_device_blocks: int, num_cpu_blocks: int) -> None:
        """KV cache tensors, then CUDA graphs over them."""
        self.runner.init_kv_cache(num_device_blocks, num_cpu_blocks)

    def execute_model(self, step: StepInput) -> PendingRunnerOutput:
        return self.runner.execute_model(step)

    def sample_deferred(self, grammar_bitmask, grammar_rows) -> PendingRunnerOutput:
        return self.runner.sample_deferred(grammar_bitmask, grammar_rows)

    @property
    def model(self) -> torch.nn.Module:
        return self.runner.model

    def shutdown(self) -> None:
        self.runner = None
