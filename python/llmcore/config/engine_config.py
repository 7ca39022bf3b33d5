"""The engine's typed configuration: what `EngineArgs.create_engine_config()` resolves the
flags into. Each part of the engine takes the sub-configs it needs, passed down
explicitly; nothing below reads flags or the environment.

Everything that can be checked without reading weights is checked here, so a bad
combination fails before a weight is read: lengths against the model's context, the
fp8 KV cache against the device and dtype, head counts against the parallel sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch

from llmcore.config.pooler_config import PoolerConfig

if TYPE_CHECKING:  # pragma: no cover
    from llmcore.model_loader.model_config import ModelConfig

FP8_KV_DTYPES = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn,
                 "fp8_e5m2": torch.float8_e5m2}


@dataclass
class DeviceConfig:
    device: torch.device

    @classmethod
    def from_name(cls, name: str) -> "DeviceConfig":
        if name == "auto":
            return cls(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        if name == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
        return cls(torch.device(name))


@dataclass
class CacheConfig:
    block_size: int
    kv_cache_dtype: str               # "auto" = model dtype
    num_gpu_blocks_override: Optional[int]
    gpu_memory_utilization: float
    swap_space_gib: float
    cpu_kv_cache_space_gib: float     # size of the pool when the device is the CPU
    enable_prefix_caching: bool = False
    # the profile run's size and CUDA graphs (copied from the scheduler/compilation
    # configs so the runner's sizing needs one object)
    max_num_seqs: int = 256
    max_num_batched_tokens: Optional[int] = None   # None: max(max_model_len, 2048)
    enforce_eager: bool = False

    def kv_torch_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        return model_dtype if self.kv_cache_dtype == "auto" else FP8_KV_DTYPES[self.kv_cache_dtype]


@dataclass
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enable_chunked_prefill: bool
    preemption_mode: str              # "recompute" | "swap"
    async_scheduling: bool            # resolved: overlap the host side with the device
    scheduler_delay_factor: float = 0.0


@dataclass
class ParallelConfig:
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: Optional[str] = None   # None: this process ("uni")
    disable_custom_all_reduce: bool = False

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


@dataclass
class LoadConfig:
    load_format: str = "auto"
    download_dir: Optional[str] = None
    model_loader_extra_config: dict = field(default_factory=dict)


@dataclass
class StructuredOutputConfig:
    backend: str = "outlines"


@dataclass
class ObservabilityConfig:
    disable_log_stats: bool = False
    disable_log_requests: bool = False
    max_log_len: Optional[int] = None


@dataclass
class EngineConfig:
    model_config: "ModelConfig"
    cache_config: CacheConfig
    scheduler_config: SchedulerConfig
    parallel_config: ParallelConfig
    load_config: LoadConfig
    device_config: DeviceConfig
    structured_output_config: StructuredOutputConfig
    observability_config: ObservabilityConfig
    seed: int = 0
    max_logprobs: int = 20
    # --task embed / --runner pooling: prompts are pooled into embeddings; None: generate
    pooler_config: Optional[PoolerConfig] = None
    # Room for the features that come next; None until they are built.
    lora_config: Optional[Any] = None
    speculative_config: Optional[Any] = None
    quantization_config: Optional[Any] = None

    @property
    def device(self) -> torch.device:
        return self.device_config.device

    @property
    def task(self) -> str:
        """"embed" or "generate": which requests the served model takes."""
        return "generate" if self.pooler_config is None else "embed"

    def validate(self) -> None:
        """Cross-checks of sub-configs against the model (no weights read)."""
        mc, cc, sc, pc = self.model_config, self.cache_config, self.scheduler_config, \
            self.parallel_config
        if not sc.enable_chunked_prefill and sc.max_num_batched_tokens < mc.max_model_len:
            raise ValueError(f"--max-num-batched-tokens ({sc.max_num_batched_tokens}) is smaller than "
                             f"--max-model-len ({mc.max_model_len}); enable chunked prefill or raise it")
        if sc.preemption_mode == "swap" and cc.swap_space_gib <= 0:
            raise ValueError("--preemption-mode swap needs --swap-space > 0")
        check_kv_cache_dtype(cc.kv_cache_dtype, mc.dtype, self.device)
        tp = pc.tensor_parallel_size
        if mc.num_heads % tp:
            raise ValueError(f"the model's {mc.num_heads} attention heads are not divisible by "
                             f"--tensor-parallel-size {tp}")
        if mc.num_kv_heads % tp and tp % mc.num_kv_heads:
            raise ValueError(f"the model's {mc.num_kv_heads} KV heads and --tensor-parallel-size {tp}: "
                             "one must divide the other")
        if mc.num_layers < pc.pipeline_parallel_size:
            raise ValueError(f"--pipeline-parallel-size {pc.pipeline_parallel_size} exceeds the "
                             f"model's {mc.num_layers} layers")

    def num_kv_heads_per_rank(self) -> int:
        """KV heads one tensor-parallel rank holds (replicated when tp > kv heads)."""
        tp = self.parallel_config.tensor_parallel_size
        return max(1, self.model_config.num_kv_heads // tp)


def check_kv_cache_dtype(kv_cache_dtype: str, model_dtype: torch.dtype, device: torch.device) -> None:
    """fp8 caches (per-tensor scale 1.0) need the CUDA kernels and fp16/bf16 activations."""
    if kv_cache_dtype == "auto":
        return
    if kv_cache_dtype not in FP8_KV_DTYPES:
        raise ValueError(f"--kv-cache-dtype must be one of auto, {', '.join(FP8_KV_DTYPES)}; "
                         f"got {kv_cache_dtype!r}")
    from llmcore import ops
    if device.type != "cuda" or not ops.cuda_available():
        raise ValueError(f"--kv-cache-dtype {kv_cache_dtype} needs a CUDA device with llmcore's "
                         f"kernels (device here: {device.type})")
    if model_dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"--kv-cache-dtype {kv_cache_dtype} needs --dtype float16 or bfloat16, "
                         f"got {str(model_dtype).split('.')[-1]}")
