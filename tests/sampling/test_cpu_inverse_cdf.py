"""The C++ inverse-CDF draw (llmcore._core.sample_inverse_cdf_f32) against torch: the same
token as searchsorted over torch's cumsum for the same uniform, and torch's logsumexp."""

from __future__ import annotations

import pytest
import torch

from llmcore import _core


def _torch_draw(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    m = x.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    cdf = (x - m).double().exp().cumsum(dim=-1)
    total = cdf[:, -1:]
    target = torch.minimum(u.double().unsqueeze(1) * total, total * (1.0 - 1e-6))
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=x.shape[1] - 1)


def _draw(x: torch.Tensor, rows: torch.Tensor, u: torch.Tensor):
    tok = torch.empty(rows.numel(), dtype=torch.int64)
    lse = torch.empty(rows.numel(), dtype=torch.float32)
    _core.sample_inverse_cdf_f32(x.data_ptr(), x.stride(0), rows.data_ptr(), rows.numel(),
                                 x.shape[1], u.data_ptr(), tok.data_ptr(), lse.data_ptr(), 2)
    return tok, lse


@pytest.mark.parametrize("V", [5, 1000, 49152])
@pytest.mark.parametrize("masked", [0.0, 0.5, 0.999])
@pytest.mark.parametrize("strided", [False, True])
def test_matches_torch(V, masked, strided):
    g = torch.Generator().manual_seed(V)
    N = 12
    base = torch.randn(N, V + (7 if strided else 0), generator=g) * 3
    x = base[:, :V] if strided else base
    x[torch.rand(N, V, generator=g) < masked] = float("-inf")
    x[torch.arange(N), torch.arange(N) % V] = 0.5           # every row allows a token
    rows = torch.tensor([N - 1 - i for i in range(N)], dtype=torch.int64)
    u = torch.rand(N, generator=g)
    tok, lse = _draw(x, rows, u)
    ref = _torch_draw(x[rows], u)
    assert torch.isfinite(x[rows, tok]).all()               # never a masked token
    assert (tok == ref).float().mean() >= 11 / 12           # a boundary may fall one token off
    torch.testing.assert_close(lse, torch.logsumexp(x[rows], dim=-1), rtol=1e-5, atol=1e-5)


def test_sampler_uses_the_kernel_lse_for_logprobs():
    from llmcore import SamplingParams
    from llmcore.sampling import SamplingBatchState
    from llmcore.sampling.sampler import Sampler
    V = 300
    st = SamplingBatchState(max_slots=4, vocab_size=V, max_model_len=64,
                            device=torch.device("cpu"))
    for slot in range(4):
        st.add(slot, SamplingParams(temperature=0.8, logprobs=0), prompt_token_ids=[1, 2])
    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(3))
    logits[:, 100:] = float("-inf")                          # a grammar mask
    out = Sampler().sample(logits, torch.arange(4), st, slots_host=[0, 1, 2, 3])
    x = logits / 0.8
    expect = x.gather(1, out.token_ids.unsqueeze(1)).squeeze(1) - torch.logsumexp(x, dim=-1)
    assert (out.token_ids < 100).all()
    torch.testing.assert_close(out.logprobs, expect, rtol=1e-5, atol=1e-5)
