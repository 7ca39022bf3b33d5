"""Which batches the sampler launches without a host sync (what lets the GPU runner queue a
guided step's sampling behind a mask the host has not filled yet). The GPU side, sampling
under torch's sync-debug "error" mode: tests/kernels/test_token_bitmask.py."""

import pytest

from llmcore import SamplingParams
from llmcore.sampling import Sampler, SamplingBatchState


@pytest.mark.parametrize("kinds,free", [
    ([dict(temperature=0.0)] * 3, True),
    ([dict(temperature=0.7)] * 3, True),
    ([dict(temperature=0.7), dict(temperature=0.0)], False),
    ([dict(temperature=0.7, top_p=0.9)] * 2, False),
    ([dict(temperature=0.7, top_k=5)] * 2, False),
    ([dict(temperature=0.7, min_p=0.1)] * 2, False),
    ([dict(temperature=0.7, seed=3)] * 2, False),
    ([dict(temperature=0.0, repetition_penalty=1.2)] * 2, False),
    ([dict(temperature=0.0, logit_bias={5: 1.0})] * 2, False),
    ([dict(temperature=0.0, min_tokens=4)] * 2, False),
    ([dict(temperature=0.0, logprobs=1)] * 2, False),
])
def test_launch_is_sync_free(kinds, free):
    st = SamplingBatchState(max_slots=len(kinds), vocab_size=64, max_model_len=32, eos_token_id=2)
    for slot, kw in enumerate(kinds):
        st.add(slot, SamplingParams(**kw), prompt_token_ids=[1, 2])
    assert Sampler().launch_is_sync_free(st, list(range(len(kinds)))) is free
