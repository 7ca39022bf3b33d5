"""Guided decoding on the GPU: the bitmask kernel against the torch reference, the host-flag
wait (the stream holds until the host publishes), the runner's mask channel, and the
sampler's sync-free launches under torch's sync-debug "error" mode. Skips without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmcore.ops import reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _mask(n, V, words=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    words = words or (V + 31) // 32
    kinds = torch.randint(0, 4, (n, words), generator=g)
    rnd = torch.randint(-2**31, 2**31 - 1, (n, words), dtype=torch.int64, generator=g).to(torch.int32)
    return torch.where(kinds == 0, torch.full_like(rnd, -1),
                       torch.where(kinds == 1, torch.zeros_like(rnd), rnd))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V,words", [(100, None), (49152, None), (128256, None), (70, 2)])
@pytest.mark.parametrize("rows", [None, [5, 0, 3]])
def test_apply_token_bitmask_matches_reference(ops, dtype, V, words, rows):
    logits = torch.randn(7, V, device="cuda").to(dtype)
    n = 7 if rows is None else len(rows)
    bm = _mask(n, V, words).cuda()
    rows_t = None if rows is None else torch.tensor(rows, device="cuda")
    expect = logits.clone()
    reference.apply_token_bitmask(expect, bm, rows_t)
    ops.apply_token_bitmask(logits, bm, rows_t)
    assert torch.equal(logits, expect)


def test_apply_token_bitmask_on_a_strided_view(ops):
    base = torch.randn(4, 160, device="cuda")
    view = base[:, :100]
    bm = _mask(2, 100).cuda()
    expect = base.clone()
    reference.apply_token_bitmask(expect[:, :100], bm, torch.tensor([3, 1], device="cuda"))
    ops.apply_token_bitmask(view, bm, torch.tensor([3, 1], device="cuda"))
    assert torch.equal(base, expect)


def test_wait_host_flag_holds_the_stream_until_published(ops):
    flag = torch.zeros(1, dtype=torch.int32, pin_memory=True)
    dev_ptr = ops.host_device_pointer(flag)
    out = torch.zeros(1, device="cuda")
    timed_out = torch.zeros(1, dtype=torch.int32, device="cuda")
    s = torch.cuda.Stream()
    done = torch.cuda.Event()
    with torch.cuda.stream(s):
        ops.wait_host_flag(dev_ptr, 1, torch.device("cuda"), 60_000, timed_out)
        out.fill_(7.0)
        done.record()
    # the kernel cannot finish before the flag: query() stays False however long we look
    for _ in range(1000):
        assert not done.query()
    flag.numpy()[0] = 1
    done.synchronize()
    assert out.item() == 7.0 and timed_out.item() == 0


def test_wait_host_flag_times_out_and_reports_it(ops):
    flag = torch.zeros(1, dtype=torch.int32, pin_memory=True)
    timed_out = torch.zeros(1, dtype=torch.int32, device="cuda")
    ops.wait_host_flag(ops.host_device_pointer(flag), 5, torch.device("cuda"), 1, timed_out)
    torch.cuda.synchronize()
    assert timed_out.item() == 1


def test_mask_channel_applies_the_published_mask_behind_later_work(ops):
    from llmcore.model_runner.grammar_mask import HostMaskChannel
    V = 1000
    dev = torch.device("cuda")
    ch = HostMaskChannel(dev, (V + 31) // 32, rows=2)
    # the kernels queued behind the wait are launched once first: CUDA's lazy loading of a
    # kernel at its first launch may wait for the held device (the runner does the same)
    warm = torch.randn(4, V, device=dev)
    ops.apply_token_bitmask(warm, _mask(3, V).to(dev), torch.tensor([3, 0, 1], device=dev))
    warm.argmax(-1)
    torch.cuda.synchronize()
    for step in range(5):                          # slots alternate; grows past 2 rows
        n = 3
        logits = torch.randn(4, V, device=dev)
        before = logits.clone()
        rows_t = torch.tensor([3, 0, 1], device=dev)
        ticket = ch.launch(logits, rows_t, n)
        after = logits.argmax(-1)                  # queued behind the mask
        done = torch.cuda.Event()
        done.record()
        assert not done.query()
        bm = _mask(n, V, seed=step).numpy()
        ch.publish(ticket, bm)
        done.synchronize()
        expect = before.clone()
        reference.apply_token_bitmask(expect, torch.from_numpy(bm).to(dev), rows_t)
        assert torch.equal(logits, expect) and torch.equal(after, expect.argmax(-1))
    assert ch.timed_out.item() == 0


def test_mask_channel_refuses_a_second_open_ticket(ops):
    from llmcore.model_runner.grammar_mask import HostMaskChannel
    ch = HostMaskChannel(torch.device("cuda"), 4, rows=2)
    t = ch.launch(torch.zeros(2, 100, device="cuda"), None, 2)
    with pytest.raises(RuntimeError):
        ch.launch(torch.zeros(2, 100, device="cuda"), None, 2)
    ch.publish(t, None)
    torch.cuda.synchronize()


def _state(kinds, V=4096):
    from llmcore import SamplingParams
    from llmcore.sampling import SamplingBatchState
    st = SamplingBatchState(max_slots=len(kinds), vocab_size=V, max_model_len=256,
                            device=torch.device("cuda"))
    for slot, kw in enumerate(kinds):
        st.add(slot, SamplingParams(**kw), prompt_token_ids=[1, 2, 3])
    return st


@pytest.mark.parametrize("kinds,free", [
    ([dict(temperature=0.0)] * 3, True),
    ([dict(temperature=0.7)] * 3, True),
    ([dict(temperature=1.0)] * 3, True),
    ([dict(temperature=0.7), dict(temperature=0.0)], False),       # mixed: nonzero()
    ([dict(temperature=0.7, top_p=0.9)] * 2, False),
    ([dict(temperature=0.7, seed=3)] * 2, False),
    ([dict(temperature=0.7, presence_penalty=0.5)] * 2, False),
    ([dict(temperature=0.7, logprobs=2)] * 2, False),
])
def test_sampler_sync_free_prediction_holds(ops, kinds, free):
    """Where the sampler predicts a sync-free launch, sampling under sync-debug "error"
    must not raise (a sync there would wedge a device held behind a grammar mask)."""
    from llmcore.model_runner.grammar_mask import sync_debug_error
    from llmcore.sampling import Sampler
    st = _state(kinds)
    sampler = Sampler(always_compute_logprobs=True)
    slots = list(range(len(kinds)))
    assert sampler.launch_is_sync_free(st, slots) is free
    if free:
        slots_t = torch.tensor(slots, device="cuda")
        logits = torch.randn(len(kinds), 4096, device="cuda")
        with sync_debug_error():
            out = sampler.sample(logits, slots_t, st, slots)
        assert out.token_ids.shape == (len(kinds),)
