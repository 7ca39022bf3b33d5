"""Llama-family decoder: Llama 2/3, Mistral (sliding window), Qwen2 (qkv bias), SmolLM2.

Runner interface:
    model.forward(input_ids [T], positions [T], kv_caches [(key_cache, value_cache)] * L,
                  attn_metadata, intermediate=None) -> hidden_states [T, hidden] (after the
                  final norm) on the last pipeline stage, IntermediateTensors on the others
    model.compute_logits(hidden_states [N, hidden]) -> float32 logits [N, vocab] (last stage)
    model.kv_cache_spec() -> (this stage's num_layers, this rank's num_kv_heads, head_dim)
    model.load_weights(iterable of (hf_name, tensor))

Pipeline parallelism (ctx.pp_rank of ctx.pp_size): a stage builds and loads only its
layers (distributed.pipeline.get_pp_layer_range); stage 0 owns the embedding, the last
stage the final norm and the LM head (and, with tied embeddings, the embedding table the
LM head shares). `model.layers` is keyed by the global layer index, so parameter names
stay the checkpoint's on every stage.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

from llmcore.distributed.pipeline import IntermediateTensors, get_pp_layer_range
from llmcore.layers.activation import SiluAndMul
from llmcore.layers.attention import Attention, AttentionMetadata
from llmcore.layers.context import LayerContext
from llmcore.layers.layernorm import RMSNorm
from llmcore.layers.linear import (MergedColumnParallelLinear, QKVParallelLinear,
                                   RowParallelLinear)
from llmcore.layers.rotary import RotaryEmbedding, get_rope
from llmcore.layers.utils import default_weight_loader
from llmcore.layers.vocab_embedding import (LogitsProcessor, ParallelLMHead,
                                            VocabParallelEmbedding)


class LlamaMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool, act: str, *,
                 ctx: LayerContext):
        super().__init__()
        if act not in ("silu", "swish"):
            raise ValueError(f"unsupported activation {act!r}: only silu is supported")
        self.gate_up_proj = MergedColumnParallelLinear(hidden_size, [intermediate_size] * 2,
                                                       ctx=ctx.child("gate_up_proj"), bias=bias)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size,
                                           ctx=ctx.child("down_proj"), bias=bias)
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class LlamaAttention(nn.Module):
    def __init__(self, config, layer_idx: int, *, ctx: LayerContext,
                 rotary_emb: RotaryEmbedding, qkv_bias: bool, o_bias: bool,
                 sliding_window: Optional[int]):
        super().__init__()
        self.hidden_size = config.hidden_size
        total_heads = config.num_attention_heads
        total_kv_heads = getattr(config, "num_key_value_heads", None) or total_heads
        self.head_dim = getattr(config, "head_dim", None) or self.hidden_size // total_heads
        self.qkv_proj = QKVParallelLinear(self.hidden_size, self.head_dim, total_heads,
                                          total_kv_heads, ctx=ctx.child("qkv_proj"),
                                          bias=qkv_bias)
        # this rank's heads
        self.num_heads = self.qkv_proj.num_heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.o_proj = RowParallelLinear(total_heads * self.head_dim, self.hidden_size,
                                        ctx=ctx.child("o_proj"), bias=o_bias)
        self.q_size = self.qkv_proj.q_size
        self.kv_size = self.qkv_proj.kv_size
        self.rotary_emb = rotary_emb  # shared by all layers (not a submodule: no state dict)
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim ** -0.5,
                              ctx=ctx.child("attn"), num_kv_heads=self.num_kv_heads,
                              sliding_window=sliding_window)

    def forward(self, cos_sin: tuple[torch.Tensor, torch.Tensor], hidden_states: torch.Tensor,
                kv_cache, attn_metadata: AttentionMetadata) -> torch.Tensor:
        qkv = self.qkv_proj(hidden_states)
        qs, ks = self.q_size, self.kv_size
        # q and k are adjacent in the fused output: rotate both with one pass, in place.
        self.rotary_emb.apply_(qkv[:, :qs + ks], *cos_sin)
        q = qkv[:, :qs]
        k = qkv[:, qs:qs + ks]
        v = qkv[:, qs + ks:]
        attn_out = self.attn(q, k, v, kv_cache, attn_metadata)
        return self.o_proj(attn_out)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int, *, ctx: LayerContext, rotary_emb, qkv_bias,
                 o_bias, sliding_window):
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_idx, ctx=ctx.child("self_attn"),
                                        rotary_emb=rotary_emb, qkv_bias=qkv_bias, o_bias=o_bias,
                                        sliding_window=sliding_window)
        self.mlp = LlamaMLP(config.hidden_size, config.intermediate_size,
                            bias=bool(getattr(config, "mlp_bias", False)),
                            act=getattr(config, "hidden_act", "silu"), ctx=ctx.child("mlp"))
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps, ctx=ctx.child("input_layernorm"))
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps,
                                                ctx=ctx.child("post_attention_layernorm"))

    def forward(self, cos_sin, hidden_states, residual, kv_cache, attn_metadata):
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(cos_sin, hidden_states, kv_cache, attn_metadata)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual


class LayersByIndex(nn.ModuleDict):
    """This stage's decoder layers keyed by their global index ("3"); `layers[3]` works."""

    def __getitem__(self, key):
        return super().__getitem__(str(key))


class LlamaModel(nn.Module):
    def __init__(self, config, *, ctx: LayerContext, rotary_emb, qkv_bias, o_bias,
                 layer_windows, needs_embedding: bool):
        super().__init__()
        self.config = config
        self.is_first = ctx.pp_rank == 0
        self.is_last = ctx.pp_rank == ctx.pp_size - 1
        self.start_layer, self.end_layer = get_pp_layer_range(config.num_hidden_layers,
                                                              ctx.pp_rank, ctx.pp_size)
        self.embed_tokens = None
        if needs_embedding:
            self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                                       ctx=ctx.child("embed_tokens"))
        # keyed "3", "4", ...: the parameter names are "model.layers.3...." on any stage
        self.layers = LayersByIndex({
            str(i): LlamaDecoderLayer(config, i, ctx=ctx.child(f"layers.{i}"),
                                      rotary_emb=rotary_emb, qkv_bias=qkv_bias, o_bias=o_bias,
                                      sliding_window=layer_windows[i])
            for i in range(self.start_layer, self.end_layer)})
        self.norm = None
        if self.is_last:
            self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, ctx=ctx.child("norm"))

    def forward(self, input_ids, cos_sin, kv_caches, attn_metadata,
                intermediate: Optional[IntermediateTensors] = None):
        if len(kv_caches) != len(self.layers):
            if len(kv_caches) != 0:
                raise ValueError(f"got {len(kv_caches)} KV caches for {len(self.layers)} layers")
            empty = torch.empty(0, device=cos_sin[0].device)
            kv_caches = [(empty, empty)] * len(self.layers)  # no cache: e.g. a profiling run
        if self.is_first:
            hidden_states, residual = self.embed_tokens(input_ids), None
        else:
            if intermediate is None:
                raise ValueError(f"pipeline stage of layers [{self.start_layer}, "
                                 f"{self.end_layer}) needs the previous stage's tensors")
            hidden_states, residual = intermediate.hidden_states, intermediate.residual
        for layer, kv_cache in zip(self.layers.values(), kv_caches):
            hidden_states, residual = layer(cos_sin, hidden_states, residual, kv_cache,
                                            attn_metadata)
        if not self.is_last:
            return IntermediateTensors(hidden_states, residual)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class LlamaForCausalLM(nn.Module):
    # checkpoint name piece -> (fused param piece, shard id)
    stacked_params_mapping = [
        ("qkv_proj", "q_proj", "q"),
        ("qkv_proj", "k_proj", "k"),
        ("qkv_proj", "v_proj", "v"),
        ("gate_up_proj", "gate_proj", 0),
        ("gate_up_proj", "up_proj", 1),
    ]
    default_qkv_bias = False

    def __init__(self, model_config, ctx: LayerContext):
        """model_config: llmcore.model_loader.ModelConfig (hf_config, dtype, max_model_len,
        rope_theta, rope_scaling, sliding_window); ctx: the root LayerContext (prefix "",
        this rank's tensor-parallel shard, dtype, device, quantization config)."""
        super().__init__()
        config = model_config.hf_config
        self.config = config
        self.model_config = model_config
        self.ctx = ctx
        self.head_dim = model_config.head_dim
        self.pp_size = ctx.pp_size
        self.is_last_stage = ctx.pp_rank == ctx.pp_size - 1
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        self.rotary_emb = get_rope(
            self.head_dim, int(self.head_dim * getattr(config, "partial_rotary_factor", 1.0)),
            max_position=config.max_position_embeddings, base=model_config.rope_theta,
            rope_scaling=model_config.rope_scaling, is_neox_style=True, device=ctx.device,
            max_len=model_config.max_model_len)
        attention_bias = bool(getattr(config, "attention_bias", False))
        qkv_bias = attention_bias or self.default_qkv_bias
        self.model = LlamaModel(config, ctx=ctx.child("model"), rotary_emb=self.rotary_emb,
                                qkv_bias=qkv_bias, o_bias=attention_bias,
                                layer_windows=model_config.layer_sliding_windows(),
                                needs_embedding=ctx.pp_rank == 0 or (
                                    self.is_last_stage and self.tie_word_embeddings))
        self.num_layers = self.model.end_layer - self.model.start_layer   # this stage's
        # this rank's kv heads (what its KV cache holds)
        self.num_kv_heads = model_config.get_num_kv_heads(ctx.tp_size)
        self.lm_head = self.logits_processor = None
        if self.is_last_stage:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size,
                                          ctx=ctx.child("lm_head"))
            if self.tie_word_embeddings:
                self.lm_head.tie_weights(self.model.embed_tokens)
            self.logits_processor = LogitsProcessor(config.vocab_size)

    # ------------------------------------------------------------------ runner interface
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
                attn_metadata: AttentionMetadata,
                intermediate: Optional[IntermediateTensors] = None):
        cos_sin = self.rotary_emb.get_cos_sin(positions, self.ctx.dtype)
        return self.model(input_ids, cos_sin, kv_caches, attn_metadata, intermediate)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.lm_head is None:
            raise RuntimeError("compute_logits runs on the last pipeline stage only")
        return self.logits_processor(self.lm_head, hidden_states)

    def kv_cache_spec(self) -> tuple[int, int, int]:
        return self.num_layers, self.num_kv_heads, self.head_dim

    # ------------------------------------------------------------------ weights
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name or "rotary_emb.cos_cached" in name:
                continue
            if self.tie_word_embeddings and name == "lm_head.weight":
                continue
            if self._on_other_stage(name):
                continue   # never read: a lazy checkpoint tensor stays on disk
            for param_piece, ckpt_piece, shard_id in self.stacked_params_mapping:
                if f".{ckpt_piece}." not in name:
                    continue
                pname = name.replace(ckpt_piece, param_piece)
                if pname not in params:
                    raise ValueError(f"checkpoint tensor {name!r} has no matching parameter")
                param = params[pname]
                param.weight_loader(param, tensor, shard_id)
                loaded.add(f"{pname}:{shard_id}")
                break
            else:
                if name not in params:
                    raise ValueError(f"checkpoint tensor {name!r} has no matching parameter "
                                     f"in {type(self).__name__}")
                param = params[name]
                getattr(param, "weight_loader", default_weight_loader)(param, tensor)
                loaded.add(name)
        self._check_all_loaded(params, loaded)
        return loaded

    def _on_other_stage(self, name: str) -> bool:
        """A checkpoint tensor another pipeline stage owns."""
        if self.pp_size == 1:
            return False
        if name.startswith("model.layers."):
            idx = int(name.split(".")[2])
            return not self.model.start_layer <= idx < self.model.end_layer
        if name.startswith("model.embed_tokens."):
            return self.model.embed_tokens is None
        if name.startswith(("model.norm.", "lm_head.")):
            return not self.is_last_stage
        return False

    def _check_all_loaded(self, params: dict, loaded: set[str]) -> None:
        missing = []
        for pname in params:
            if pname in loaded:
                continue
            fused = [sid for p, _, sid in self.stacked_params_mapping if f".{p}." in pname]
            if fused and all(f"{pname}:{sid}" in loaded for sid in fused):
                continue
            missing.append(pname)
        if missing:
            raise ValueError(f"checkpoint is missing {len(missing)} weights, e.g. {missing[:5]}")


class MistralForCausalLM(LlamaForCausalLM):
    pass


class Qwen2ForCausalLM(LlamaForCausalLM):
    default_qkv_bias = True
