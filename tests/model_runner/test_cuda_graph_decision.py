"""--max-seq-len-to-capture: which decode steps replay a CUDA graph, and that the flag
reaches the graph runner's buffers. CPU-only: the graph runner is built on the CPU with
capture() stubbed out (capturing needs a GPU; tests/kernels covers that)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from llmcore.config import EngineArgs
from llmcore.model_runner import cuda_graph
from llmcore.model_runner.cuda_graph import DecodeGraphRunner, fits_decode_graph


@pytest.mark.parametrize("prefills, tokens, seqs, max_len, expected", [
    (0, 4, 4, 100, True),      # plain decode within the captured context
    (0, 4, 4, 128, True),      # exactly the captured length
    (0, 4, 4, 129, False),     # one sequence past it: eager (vLLM's rule)
    (1, 20, 4, 50, False),     # a prefill in the batch
    (0, 8, 4, 50, False),      # k tokens per sequence (verify step)
    (0, 9, 9, 50, False),      # batch larger than the largest graph
    (0, 0, 0, 0, False),       # nothing to run
])
def test_fits_decode_graph(prefills, tokens, seqs, max_len, expected):
    assert fits_decode_graph(prefills, tokens, seqs, max_len, max_graph_batch=8,
                             max_seq_len_to_capture=128) is expected


def _plan(seq_lens, prefills=0, tokens=None):
    n = len(seq_lens)
    return SimpleNamespace(num_seqs=n, num_prefill_seqs=prefills,
                           num_batched_tokens=n if tokens is None else tokens,
                           seq_lens=np.asarray(seq_lens, dtype=np.int32))


def test_graph_runner_sizes_its_buffers_from_the_captured_length():
    gr = DecodeGraphRunner(model=None, kv_caches=[], device=torch.device("cpu"), max_num_seqs=8,
                           max_seq_len_to_capture=100, block_size=16)
    assert gr.max_blocks == 7 and tuple(gr.block_tables.shape) == (8, 7)
    assert gr._meta(2).max_seq_len == 100
    assert gr.fits(_plan([5, 100]))
    assert not gr.fits(_plan([5, 101]))
    assert not gr.fits(_plan([5, 50], prefills=1, tokens=30))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=False,
                         eos_token_id=None, bos_token_id=None)
    torch.manual_seed(0)
    out = str(tmp_path_factory.mktemp("tiny_graph"))
    tf.LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def _args(folder, **kw) -> EngineArgs:
    return EngineArgs(model=folder, skip_tokenizer_init=True, device="cpu", max_model_len=200,
                      num_gpu_blocks_override=32, disable_log_stats=True, **kw)


@pytest.mark.parametrize("kw, expected", [
    ({}, 200),                                        # default 8192, capped at max_model_len
    ({"max_seq_len_to_capture": 64}, 64),
    ({"max_context_len_to_capture": 48}, 48),         # the deprecated alias
    ({"max_seq_len_to_capture": 64, "max_context_len_to_capture": 96}, 96),
])
def test_flag_resolves_into_the_cache_config(tiny_folder, kw, expected):
    assert _args(tiny_folder, **kw).create_engine_config().cache_config.max_seq_len_to_capture \
        == expected


def test_bad_value_is_refused(tiny_folder):
    with pytest.raises(ValueError, match="max-seq-len-to-capture"):
        _args(tiny_folder, max_seq_len_to_capture=0).create_engine_config()


def test_value_reaches_the_graph_runner(tiny_folder, monkeypatch):
    """The runner builds its graph runner with the resolved length (graphs forced on the CPU,
    capture stubbed), and a decode step past that length takes the eager path."""
    from llmcore.engine.llm_engine import LLMEngine
    from llmcore.model_runner.model_runner import ModelRunner
    from llmcore.sampling_params import SamplingParams

    captured = []
    monkeypatch.setattr(ModelRunner, "_graphs_possible", lambda self: True)
    monkeypatch.setattr(DecodeGraphRunner, "capture", lambda self: captured.append(self))
    replays = []
    monkeypatch.setattr(DecodeGraphRunner, "run",
                        lambda self, plan, n, fix=None: replays.append(n) or None)
    engine = LLMEngine(_args(tiny_folder, max_seq_len_to_capture=40, enforce_eager=False))
    assert len(captured) == 1 and captured[0].max_seq_len == 40 and captured[0].max_blocks == 3
    # Every decode step of a 45-token prompt is past 40: none may reach the graph.
    engine.add_request("long", {"prompt_token_ids": list(range(1, 46))},
                       SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True,
                                      detokenize=False))
    while engine.has_unfinished_requests():
        engine.step()
    assert replays == []
    assert cuda_graph.fits_decode_graph(0, 1, 1, 46, captured[0].max_bs, 40) is False
