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
    max_seq_len_to_capture: int = 8192            # resolved: at most max_model_len

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
    # Internal (no flag): steps in flight at once, each a disjoint micro-batch of sequences
    # (engine/micro_batches.py). None: the pipeline-parallel size, as vLLM; 1 forces one
    # step at a time (a benchmark's baseline).
    num_micro_batches: Optional[int] = None


@dataclass
class ParallelConfig:
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: Optional[str] = None   # "ray" | "mp" | None: this process
    # True: every tensor-parallel all-reduce goes through NCCL (no custom all-reduce)
    disable_custom_all_reduce: bool = False
    ray_workers_use_nsight: bool = False   # Ray workers run under nsys
    # at most this many ranks read weights at once (None: all)
    max_parallel_loading_workers: Optional[int] = None
    engine_use_ray: bool = False   # the engine core runs as a Ray actor (engine/core_ray.py)

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def output_rank(self) -> int:
        """The rank whose step output the engine reads: the first rank of the last
        pipeline stage (rank = pp_rank * tp_size + tp_rank); its tp peers agree with it."""
        return (self.pipeline_parallel_size - 1) * self.tensor_parallel_size


@dataclass
class LoadConfig:
    load_format: str = "auto"
    download_dir: Optional[str] = None
    model_loader_extra_config: dict = field(default_factory=dict)


@dataclass
class StructuredOutputConfig:
    backend: str = "outlines"         # --guided-decoding-backend; a request may override it
    compile_timeout_s: float = 30.0   # a grammar still compiling after this fails its request
    compile_threads: int = 2          # grammars compile in this many threads, off the step loop
    cache_size: int = 256             # compiled grammars kept, keyed by (backend, spec)
    # threads filling a batch's token bitmask (xgrammar's batch matcher; 0: half the cores,
    # at most 8; the other backends fill row by row)
    fill_threads: int = 0
    # GPUs: queue a guided step's sampling behind a device-side wait for the host's mask
    # (model_runner/grammar_mask.py; --guided-decoding-overlap). Opt-in: see that module.
    overlap_mask_wait: bool = False


@dataclass
class ObservabilityConfig:
    disable_log_stats: bool = False
    disable_log_requests: bool = False
    max_log_len: Optional[int] = None


TOKENIZER_POOL_TYPES = ("ray", "thread")


@dataclass
class TokenizerPoolConfig:
    pool_size: int = 0             # 0: tokenize inline (in the event loop)
    pool_type: str = "ray"
    extra_config: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.pool_size < 0:
            raise ValueError("--tokenizer-pool-size must be >= 0")
        if self.pool_type not in TOKENIZER_POOL_TYPES:
            raise ValueError(f"--tokenizer-pool-type must be one of {list(TOKENIZER_POOL_TYPES)}, got "
                             f"{self.pool_type!r}")
        if not isinstance(self.extra_config, dict):
            raise ValueError("--tokenizer-pool-extra-config must be a JSON object")
        if self.extra_config and self.pool_type != "ray" and self.pool_size > 0:
            raise ValueError("--tokenizer-pool-extra-config holds Ray actor options: it needs "
                             "--tokenizer-pool-type ray")



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
    tokenizer_pool_config: TokenizerPoolConfig = field(default_factory=TokenizerPoolConfig)
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
        if self.pooler_config is not None and pc.pipeline_parallel_size > 1:
            raise ValueError("--task embed with --pipeline-parallel-size > 1 is not supported: "
                             "pooling reads the final hidden states, which only the last stage "
                             "has; use tensor parallelism")
        if not sc.enable_chunked_prefill and sc.max_num_batched_tokens < mc.max_model_len:
            raise ValueError(f"--max-num-batched-tokens ({sc.max_num_batched_tokens}) is smaller than "
                             f"--max-model-len ({mc.max_model_len}); enable chunked prefill or raise it")
        if sc.preemption_mode == "swap" and cc.swap_space_gib <= 0:
            raise ValueError("--preemption-mode swap needs --swap-space > 0")
        check_kv_cache_dtype(cc.kv_cache_dtype, mc.dtype, self.device)
        tp = pc.tensor_parallel_size
        if pc.pipeline_parallel_size < 1:
            raise ValueError(f"--pipeline-parallel-size must be >= 1, got "
                             f"{pc.pipeline_parallel_size}")
        if pc.max_parallel_loading_workers is not None and pc.max_parallel_loading_workers < 1:
            raise ValueError(f"--max-parallel-loading-workers must be >= 1, got "
                             f"{pc.max_parallel_loading_workers}")
        if mc.num_heads % tp:
            raise ValueError(f"the model's {mc.num_heads} attention heads are not divisible by "
                             f"--tensor-parallel-size {tp}")
        if mc.num_kv_heads % tp and tp % mc.num_kv_heads:
            raise ValueError(f"the model's {mc.num_kv_heads} KV heads and --tensor-parallel-size {tp}: "
                             "one must divide the other")
        inter = getattr(mc.hf_config, "intermediate_size", None)
        if inter is not None and int(inter) % tp:
            raise ValueError(f"the model's intermediate size {inter} is not divisible by "
                             f"--tensor-parallel-size {tp}")
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
