"""A small valid GGUF file (llama metadata, a toy vocabulary, F32/F16/Q8_0 tensors)
written with the gguf package's GGUFWriter: the seed the fuzz tests mutate."""

from __future__ import annotations

import types

import numpy as np

HIDDEN, HEADS, KV_HEADS, FFN, VOCAB = 8, 2, 1, 32, 16


def write_seed_gguf(path: str) -> None:
    import gguf

    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(VOCAB)])
    w.add_token_scores([float(i) for i in range(VOCAB)])
    w.add_chat_template("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}")
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((VOCAB, HIDDEN), dtype=np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(HIDDEN, np.float32))
    w.add_tensor("blk.0.attn_q.weight", rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float16))
    w.add_tensor("blk.0.attn_k.weight",
                 rng.standard_normal((HIDDEN // HEADS * KV_HEADS, HIDDEN)).astype(np.float16))
    down = rng.standard_normal((HIDDEN, FFN), dtype=np.float32)
    q8 = gguf.quants.quantize(down, gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.ffn_down.weight", q8, raw_shape=q8.shape,
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def seed_hf_config():
    """The attributes iterate_gguf_weights reads from the HF config."""
    return types.SimpleNamespace(num_attention_heads=HEADS, num_key_value_heads=KV_HEADS)


def header_u64_offsets(data: bytes) -> list[int]:
    """Offsets of every uint64 count/length in the seed's header (tensor and metadata
    counts, string and array lengths, tensor dims and offsets) - the fields worth
    inflating. Written for the seed's own layout (little-endian, v3)."""
    import struct

    scalar = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    out = [8, 16]
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    pos = 24

    def string(pos: int) -> int:
        out.append(pos)
        return pos + 8 + struct.unpack_from("<Q", data, pos)[0]

    for _ in range(n_kv):
        pos = string(pos)
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if vtype == 8:
            pos = string(pos)
        elif vtype == 9:
            (itype,) = struct.unpack_from("<I", data, pos)
            out.append(pos + 4)
            (count,) = struct.unpack_from("<Q", data, pos + 4)
            pos += 12
            for _ in range(count):
                pos = string(pos) if itype == 8 else pos + scalar[itype]
        else:
            pos += scalar[vtype]
    for _ in range(n_tensors):
        pos = string(pos)
        (n_dims,) = struct.unpack_from("<I", data, pos)
        pos += 4
        out.extend(pos + 8 * i for i in range(n_dims))
        pos += 8 * n_dims + 4
        out.append(pos)
        pos += 8
    return out
