"""A Worker owns one device: its model (shard), KV cache, memory profile, CUDA graphs and
model runner. The executor drives one worker per device; the engine core never touches
them directly.

Any executor (mp processes, Ray actors) drives a worker the same way: join
torch.distributed as `rank` (llmcore.distributed.init_distributed), then init_device()
(which builds this rank's tensor- and pipeline-parallel groups, collectively, when none
were given), load_model(), determine_num_blocks(), initialize_cache(), execute_model() per
step. rank = pp_rank * tp_size + tp_rank; the step's answer is that of
ParallelConfig.output_rank (the first rank of the last stage)."""

from __future__ import annotations

import logging
import time
from typing import Optional

import torch

from llmcore.config.engine_config import EngineConfig
from llmcore.layers.context import LayerContext, ParallelGroup
from llmcore.model_runner.model_runner import ModelRunner
from llmcore.model_runner.step_io import PendingRunnerOutput, StepInput

logger = logging.getLogger(__name__)


class Worker:
    def __init__(self, config: EngineConfig, rank: int = 0, local_rank: int = 0,
                 eos_token_id: Optional[int] = None, tp_group: Optional[ParallelGroup] = None,
                 pp_group=None):
        self.config = config
        self.rank, self.local_rank = rank, local_rank
        self.eos_token_id = eos_token_id
        pc = config.parallel_config
        self.tp_size, self.pp_size = pc.tensor_parallel_size, pc.pipeline_parallel_size
        self.tp_rank, self.pp_rank = rank % self.tp_size, rank // self.tp_size
        if self.pp_rank >= self.pp_size:
            raise ValueError(f"rank {rank} is outside tensor x pipeline size "
                             f"{self.tp_size} x {self.pp_size}")
        self.tp_group = tp_group
        self.pp_group = pp_group    # llmcore.distributed.PipelineGroup
        self.device = config.device
        if self.device.type == "cuda" and self.device.index is None and pc.world_size > 1:
            self.device = torch.device("cuda", local_rank)
        self.runner: Optional[ModelRunner] = None

    def init_device(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device.index if self.device.index is not None
                                  else self.local_rank)
        torch.manual_seed(self.config.seed)
        needs_tp = self.tp_size > 1 and self.tp_group is None
        needs_pp = self.pp_size > 1 and self.pp_group is None
        if needs_tp or needs_pp:
            import torch.distributed as dist

            from llmcore.distributed.groups import build_parallel_groups
            if not dist.is_initialized():
                raise ValueError(f"rank {self.rank}: tensor x pipeline size {self.tp_size} x "
                                 f"{self.pp_size} needs torch.distributed initialized first "
                                 "(llmcore.distributed.init_distributed)")
            pc = self.config.parallel_config
            groups = build_parallel_groups(
                self.tp_size, self.pp_size, device=self.device,
                disable_custom_all_reduce=pc.disable_custom_all_reduce)
            self.tp_group, self.pp_group = groups.tp_group, groups.pp_group

    def load_model(self) -> tuple[float, float]:
        """Build this rank's shard / stage and read its weights. -> (start, end) of the
        load on time.monotonic() (one clock for every process of the host), for the
        executor's log and --max-parallel-loading-workers."""
        from llmcore.model_loader import get_model
        start = time.monotonic()
        mc = self.config.model_config
        ctx = None
        if self.tp_size > 1 or self.pp_size > 1:
            ctx = LayerContext(device=self.device, dtype=mc.dtype, tp_rank=self.tp_rank,
                               tp_size=self.tp_size, pp_rank=self.pp_rank,
                               pp_size=self.pp_size, tp_group=self.tp_group)
        model = get_model(mc, self.device, layer_context=ctx)
        self.runner = ModelRunner(model, self.config, eos_token_id=self.eos_token_id,
                                  pp_group=self.pp_group)
        return start, time.monotonic()

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
