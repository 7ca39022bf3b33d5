"""Batched sampler.

Pipeline (vLLM v0 order), each stage vectorised over the batch and skipped entirely
when no active slot needs it:

  1. logit_bias            (sparse index_put_, accumulate)
  2. min_tokens            (EOS + stop ids -> -inf while num_generated < min_tokens)
  3. penalties             (repetition on prompt+output tokens, HF/vLLM style:
                            l>0 -> l/r, l<=0 -> l*r; then frequency * count and
                            presence * (count>0) subtracted, output tokens only)
  4. temperature           (random rows only; greedy rows use 1.0 as vLLM v0)
  5. top-k, top-p          (per-row cut-off on the sorted candidates: `topk(K)` with
                            K = max top_k in the batch (at least 256 when a row has
                            top-p without top-k; such a row falls back to a full sort
                            only if its top 256, then top 4096, hold < top_p of the mass). Random rows
                            are then sampled among the K candidates only; when logprobs
                            are wanted the -inf mask is also written into the logits.
                            Ties with the cut-off value are kept.)
  6. min-p                 (in logit space: drop l < max(l) + log(min_p), which is
                            exactly p < min_p * max(p) without a softmax)
  7. sample                greedy rows: argmax. random rows: exponential race
                            argmax(l - log(E)), E ~ Exp(1) i.i.d. (== sampling from
                            softmax(l)): over the K candidates for top-k/top-p rows;
                            on the CPU, rows without top-k/top-p use one uniform and
                            the inverse CDF instead (exact, no per-token noise); on a
                            GPU, so does every row of a batch when no active slot has
                            top-k/top-p (the CUDA sampling kernel). Seeded rows draw
                            from their own torch.Generator a fixed amount per path that
                            does not depend on the batch (token-indexed V values for
                            filtered rows), so their tokens do not depend on the batch
                            they are in; unseeded rows share one generator.

Logprobs semantics (`logprobs_mode`):
  * "processed" (default, vLLM v0): log_softmax of the logits after stages 1-6, i.e.
    after bias, penalties, temperature and top-k/top-p/min-p masking. Masked tokens
    have logprob -inf (front ends must clamp for JSON, vLLM uses -9999.0). Greedy rows
    are not temperature-scaled.
  * "raw" (vLLM V1 default): log_softmax of the logits passed in.
`SamplerOutput.logprobs` (sampled token) and `ranks` are computed only when some row of
the batch has `logprobs is not None` (or `Sampler(always_compute_logprobs=True)`; then
ranks are still only computed if some row asked), else they are None -- as in vLLM V1,
cumulative_logprob is then None. `topk_*` only when the largest `logprobs` in the
batch is > 0. This keeps an all-greedy batch at ~ one argmax.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from llmcore import ops
from llmcore.sampling.state import IndexLike, SamplingBatchState, as_long_tensor

_NEG_INF = float("-inf")
_TINY = 1e-30


def _log_exp_noise_(u: torch.Tensor) -> torch.Tensor:
    """In place: U(0,1) -> log(E), E = -log(U) ~ Exp(1). U < 1 so E > 0; U == 0 gives
    log(E) = +inf, i.e. score -inf (never chosen), never NaN for finite/-inf logits."""
    return u.log_().neg_().log_()


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor                  # int64 [N]
    logprobs: Optional[torch.Tensor] = None  # float32 [N], logprob of token_ids
    topk_ids: Optional[torch.Tensor] = None  # int64 [N, k], k = max logprobs in batch
    topk_logprobs: Optional[torch.Tensor] = None  # float32 [N, k]
    ranks: Optional[torch.Tensor] = None     # int64 [N], 1-based rank of token_ids


class Sampler:
    # top-p rows without top-k first look at this many candidates; the full sort is
    # only done for rows whose top-p mass is not reached within them.
    TOP_P_CANDIDATES = 256

    def __init__(self, logprobs_mode: str = "processed", always_compute_logprobs: bool = False):
        if logprobs_mode not in ("processed", "raw"):
            raise ValueError(f"logprobs_mode must be 'processed' or 'raw', got {logprobs_mode!r}")
        self.logprobs_mode = logprobs_mode
        self.always_compute_logprobs = always_compute_logprobs

    def __call__(self, logits, slots, state, slots_host=None):
        return self.sample(logits, slots, state, slots_host)

    @torch.no_grad()
    def sample(self, logits: torch.Tensor, slots: IndexLike,
               state: SamplingBatchState, slots_host: Optional[list] = None) -> SamplerOutput:
        """logits: float32 [N, V] (not modified); slots: [N] slot of each row (one
        slot per sequence; a slot must not appear twice in a batch). slots_host: the same
        slots as a host list, when the caller has it: all-greedy and all-random batches then
        need no device->host sync (the engine queues the next step meanwhile)."""
        if logits.dim() != 2:
            raise ValueError(f"logits must be 2-D [N, V], got shape {tuple(logits.shape)}")
        N, V = logits.shape
        if logits.dtype != torch.float32:
            logits = logits.float()
        slots = as_long_tensor(slots, logits.device)
        max_k = -1
        if state._logprob_slots:
            max_k = int(state.num_logprobs[slots].max())
        want_lp = max_k >= 0 or self.always_compute_logprobs
        need_x = want_lp and self.logprobs_mode == "processed"
        x, is_rand, cand = self._process(logits, slots, state, need_x, slots_host)
        lse_of_x: list = [None]   # the CPU draw's per-row log-sum-exp of x, when it has all rows
        if is_rand is None:
            token_ids = x.argmax(dim=-1)
        else:
            token_ids = self._sample_random(x, slots, is_rand, cand, state, lse_of_x)
        if not want_lp:
            return SamplerOutput(token_ids=token_ids)

        lp_src = logits if self.logprobs_mode == "raw" else x
        lse = lse_of_x[0] if lp_src is x and lse_of_x[0] is not None \
            else torch.logsumexp(lp_src, dim=-1)
        tok_logit = lp_src.gather(1, token_ids.unsqueeze(1)).squeeze(1)
        token_logprobs = tok_logit - lse
        ranks = topk_ids = topk_logprobs = None
        if max_k >= 0:
            if is_rand is None and lp_src is x:
                # argmax of the same tensor: nothing is strictly larger.
                ranks = torch.ones(N, dtype=torch.long, device=x.device)
            else:
                ranks = (lp_src > tok_logit.unsqueeze(1)).sum(dim=-1) + 1
        if max_k > 0:
            tv, ti = lp_src.topk(min(max_k, V), dim=-1)
            topk_ids = ti
            topk_logprobs = tv - lse.unsqueeze(1)
        return SamplerOutput(token_ids=token_ids, logprobs=token_logprobs,
                             topk_ids=topk_ids, topk_logprobs=topk_logprobs, ranks=ranks)

    def launch_is_sync_free(self, state: SamplingBatchState, slots_host: list) -> bool:
        """True when sample() queues this batch without reading device values on the host
        (no .any() / nonzero() / .item() / seeded-row lookups), so the device may be held
        behind a host-filled grammar mask meanwhile (model_runner/grammar_mask.py). Keep it
        in step with the syncs of _process, _sample_random, _uniform and sample."""
        if (state._bias_slots or state._mintok_slots or state._penalty_slots
                or state._logprob_slots or state._seeded_slots or state._minp_slots):
            return False
        if not state._random_slots:
            return True
        n_rand = sum(1 for sl in slots_host if sl in state._random_slots)
        if n_rand == 0:
            return True
        # mixed greedy / random rows find theirs with nonzero(); top-k / top-p filter rows too
        return n_rand == len(slots_host) and not state.has_top_k_or_p

    @torch.no_grad()
    def process_logits(self, logits: torch.Tensor, slots: IndexLike,
                       state: SamplingBatchState) -> torch.Tensor:
        """Stages 1-6 only: the logits the sampler draws from (greedy rows are not
        temperature-scaled / masked). Masked tokens are -inf. For tests/debugging."""
        x, _, _ = self._process(logits.float(), as_long_tensor(slots, logits.device), state,
                                need_x=True)
        return x

    def _process(self, logits: torch.Tensor, slots: torch.Tensor, state: SamplingBatchState,
                 need_x: bool, slots_host: Optional[list] = None):
        """Returns (x, is_rand, cand). is_rand: None (all greedy), True (all random) or a
        bool row mask. x: processed logits; when `need_x` is False and
        every filtered row is resolved by candidates, the top-k/top-p/min-p masks are
        NOT applied to x (the sampler uses cand). cand: None or (rows [n], ids [n, K],
        vals [n, K]) -- for those batch rows the sorted top-K candidate token ids and
        their processed logits (-inf where masked); all kept tokens are among them."""
        N = logits.shape[0]
        x = logits
        copied = False

        def writable() -> torch.Tensor:
            nonlocal x, copied
            if not copied:
                x = x.clone()
                copied = True
            return x

        # ---- 1, 2: sparse per-slot edits (logit_bias, min_tokens)
        if state._bias_slots or state._mintok_slots:
            inv = state._inv
            inv[slots] = torch.arange(N, device=slots.device)
            try:
                if state._bias_slots:
                    bs, bt, bv = state._bias_index()
                    rows = inv[bs]
                    m = rows >= 0
                    if bool(m.any()):
                        writable().index_put_((rows[m], bt[m]), bv[m], accumulate=True)
                if state._mintok_slots:
                    ms, mt = state._mintok_index()
                    rows = inv[ms]
                    m = (rows >= 0) & (state.num_generated[ms] < state.min_tokens[ms])
                    if bool(m.any()):
                        writable()[rows[m], mt[m]] = _NEG_INF
            finally:
                inv[slots] = -1

        # ---- 3: penalties
        if state._penalty_slots:
            rows = state.has_penalty[slots].nonzero().squeeze(1)
            if rows.numel():
                s = slots[rows]
                xw = writable()
                l = xw[rows]
                cnt = state.output_counts[s]
                out_mask = cnt > 0
                if state._rep_slots:
                    rp = state.repetition_penalty[s].unsqueeze(1)
                    seen = out_mask | state.prompt_mask[s]
                    l = torch.where(seen, torch.where(l > 0, l / rp, l * rp), l)
                l -= state.frequency_penalty[s].unsqueeze(1) * cnt
                l -= state.presence_penalty[s].unsqueeze(1) * out_mask
                xw[rows] = l

        # ---- fast path: nobody random in this batch
        if not state._random_slots:
            return x, None, None
        if slots_host is not None:
            n_rand = sum(1 for sl in slots_host if sl in state._random_slots)
            if n_rand == 0:
                return x, None, None
            is_rand = True if n_rand == N else ~state.is_greedy[slots]
        else:
            is_rand = ~state.is_greedy[slots]
            if not bool(is_rand.any()):
                return x, None, None

        # ---- 4: temperature (greedy rows hold 1.0)
        if state._temp_slots:
            t = state.temperature[slots].unsqueeze(1)
            if copied:
                x.div_(t)
            else:  # one pass instead of clone + div_
                x = x / t
                copied = True

        # ---- 5: top-k / top-p
        cand = None
        mask_x_rows = None          # rows of x still to be masked at thr
        if state.has_top_k_or_p:
            V = x.shape[1]
            k = state.top_k[slots]
            p = state.top_p[slots]
            rows = ((k < V) | (p < 1.0)).nonzero().squeeze(1)
            if rows.numel():
                all_rows = rows.numel() == N
                k_s = k if all_rows else k[rows]
                p_s = p if all_rows else p[rows]
                xs = x if all_rows else x[rows]
                thr, ids, vals, count, resolved = self._top_k_top_p(xs, k_s, p_s, V)
                if resolved:
                    pos = torch.arange(vals.shape[1], device=x.device)
                    cand = (rows, ids, vals.masked_fill(pos >= count.unsqueeze(1), _NEG_INF))
                if need_x or not resolved:
                    mask_x_rows = (rows, thr, all_rows)
        if mask_x_rows is not None:
            rows, thr, all_rows = mask_x_rows
            xw = writable()
            if all_rows:
                xw.masked_fill_(xw < thr, _NEG_INF)
            else:
                full_thr = torch.full((N, 1), _NEG_INF, device=x.device)
                full_thr[rows] = thr
                xw.masked_fill_(xw < full_thr, _NEG_INF)

        # ---- 6: min-p (logit space: l < max(l) + log(min_p)  <=>  p < min_p * max(p))
        if state._minp_slots:
            mp = state.min_p[slots]
            if bool((mp > 0).any()):
                log_mp = torch.log(mp)
                x_done = False
                if cand is not None:
                    c_rows, c_ids, c_vals = cand
                    lm = log_mp[c_rows]
                    c_vals = c_vals.masked_fill(c_vals < (c_vals[:, :1] + lm.unsqueeze(1)), _NEG_INF)
                    cand = (c_rows, c_ids, c_vals)
                    # x only needs it for rows outside the candidates (or for logprobs)
                    outside = mp > 0
                    outside[c_rows] = False
                    x_done = not need_x and not bool(outside.any())
                if not x_done:
                    xw = writable()
                    thr = xw.amax(dim=-1) + log_mp
                    xw.masked_fill_(xw < thr.unsqueeze(1), _NEG_INF)
        return x, is_rand, cand

    @classmethod
    def _top_k_top_p(cls, xs, k_s, p_s, V, force_sort=False, cand_k=None):
        """Top-k then top-p (vLLM v0 semantics: top-p mass is measured on the softmax
        of the top-k survivors) for the rows of xs. Returns (thr [n,1] smallest kept
        logit, cand ids [n,K], cand vals [n,K] sorted descending, kept count [n],
        resolved: every row's kept set lies within the K candidates)."""
        has_p = p_s < 1.0
        any_p = bool(has_p.any())
        p_only = has_p & (k_s >= V)
        any_p_only = any_p and bool(p_only.any())
        K = int(k_s[k_s < V].max()) if bool((k_s < V).any()) else 0
        cand_k = cls.TOP_P_CANDIDATES if cand_k is None else cand_k
        if any_p_only:
            K = max(K, cand_k)
        if force_sort or K * 4 >= V:
            K = V
            vals, ids = xs.sort(dim=-1, descending=True)
        else:
            vals, ids = xs.topk(K, dim=-1, sorted=True)
        pos = torch.arange(K, device=xs.device)
        keep = pos.unsqueeze(0) < k_s.unsqueeze(1)                # top-k
        if any_p:
            masked = vals.masked_fill(~keep, _NEG_INF)
            norm = masked.logsumexp(dim=-1)
            if any_p_only and K < V:
                norm = torch.where(p_only, xs.logsumexp(dim=-1), norm)
            probs = (masked - norm.unsqueeze(1)).exp_()
            cum = probs.cumsum(dim=-1)
            keep &= (cum - probs) < p_s.unsqueeze(1)              # mass strictly above < p
            keep[:, 0] = True
        count = keep.sum(dim=-1)
        thr = vals.gather(1, (count - 1).unsqueeze(1))
        resolved = K < V
        if any_p_only and K < V:
            # p-only rows whose candidates hold less than p of the mass: retry with
            # 16x more candidates, then a full sort.
            bad = (p_only & (cum[:, -1] < p_s)).nonzero().squeeze(1)
            if bad.numel():
                resolved = False
                thr[bad] = cls._top_k_top_p(xs[bad], k_s[bad], p_s[bad], V,
                                            cand_k=cand_k * 16)[0]
        return thr, ids, vals, count, resolved

    @staticmethod
    def _uniform(rows: torch.Tensor, width: int, slots: torch.Tensor,
                 seeded_b: Optional[torch.Tensor], state: SamplingBatchState,
                 seeded_width: Optional[int] = None,
                 ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """U(0,1) noise [len(rows), width]. Unseeded rows draw from the shared generator.
        A seeded row draws `seeded_width` (default `width`) values from its own generator,
        gathered at its `ids` row when given (candidate rows draw V values indexed by token
        id), so its draw does not depend on the batch or on the sampling path."""
        q = torch.empty((rows.numel(), width), dtype=torch.float32, device=slots.device)
        if seeded_b is None:
            return q.uniform_(generator=state.generator)
        sd = seeded_b[rows]
        sp = sd.nonzero().squeeze(1)
        if sp.numel() == 0:
            return q.uniform_(generator=state.generator)
        up = (~sd).nonzero().squeeze(1)
        if up.numel():
            q[up] = torch.empty((up.numel(), width), dtype=torch.float32,
                                device=slots.device).uniform_(generator=state.generator)
        n = width if seeded_width is None else seeded_width
        for pos, slot in zip(sp.tolist(), slots[rows[sp]].tolist()):
            u = torch.empty(n, dtype=torch.float32, device=slots.device).uniform_(
                generator=state.generators[slot])
            q[pos] = u if ids is None else u[ids[pos]]
        return q

    @classmethod
    def _sample_inverse_cdf(cls, x: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor,
                            seeded_b: Optional[torch.Tensor], state: SamplingBatchState,
                            lse_of_x: list) -> torch.Tensor:
        """Exact draw from softmax(x[rows]) with one uniform per row: the first token whose
        cumulative (unnormalised) probability exceeds u * total. Seeded rows draw their one
        value from their own generator, so their token does not depend on the batch.
        fp32 rows go to the C++ kernel (llmcore._core, cpu_sampling.h: one exp pass, masked
        -inf tokens at vector speed where torch's exp takes a slow path on them, and the
        rows' log-sum-exp for the logprobs, stored in lse_of_x[0] when `rows` is every row);
        anything else to torch (about 3 passes over the vocabulary)."""
        u = cls._uniform(rows, 1, slots, seeded_b, state)
        N, V = x.shape
        if x.dtype == torch.float32 and x.stride(1) == 1 and _core_sampler() is not None:
            rows = rows.contiguous()
            tok = torch.empty(rows.numel(), dtype=torch.int64)
            lse = torch.empty(rows.numel(), dtype=torch.float32)
            _core_sampler()(x.data_ptr(), x.stride(0), rows.data_ptr(), rows.numel(), V,
                            u.data_ptr(), tok.data_ptr(), lse.data_ptr(), torch.get_num_threads())
            if rows.numel() == N:   # sorted distinct rows (arange / nonzero()): row i is i
                lse_of_x[0] = lse
            return tok
        xr = x if rows.numel() == N else x[rows]
        m = xr.amax(dim=-1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        cdf = torch.sub(xr, m).exp_().cumsum_(dim=-1)
        total = cdf[:, -1:]
        # u < 1 strictly, and `right=True` skips zero-probability tokens (flat cdf runs)
        target = torch.minimum(u * total, total * (1.0 - 1e-6))
        tok = torch.searchsorted(cdf, target, right=True).squeeze(1)
        return tok.clamp_(max=xr.shape[1] - 1)

    @classmethod
    def _sample_random(cls, x: torch.Tensor, slots: torch.Tensor, is_rand: torch.Tensor,
                       cand, state: SamplingBatchState, lse_of_x: list) -> torch.Tensor:
        # Exponential race: argmax(l - log E), E = -log U ~ Exp(1) i.i.d. per token, is
        # a draw from softmax(l). (uniform_ + 2 logs is ~6x faster than exponential_.)
        N, V = x.shape
        if is_rand is True:  # every row random: no nonzero() (a device sync)
            rand_rows = torch.arange(N, device=x.device)
        else:
            rand_rows = is_rand.nonzero().squeeze(1)
        if rand_rows.numel() < N:
            token_ids = x.argmax(dim=-1)          # greedy rows
        else:
            token_ids = torch.empty(N, dtype=torch.long, device=x.device)
        seeded_b = state.is_seeded[slots] if state._seeded_slots else None
        if cand is not None:
            c_rows, c_ids, c_vals = cand
            in_cand = torch.zeros(N, dtype=torch.bool, device=x.device)
            in_cand[c_rows] = True
            full_rows = rand_rows[~in_cand[rand_rows]]
            q = cls._uniform(c_rows, c_ids.shape[1], slots, seeded_b, state,
                             seeded_width=V, ids=c_ids)
            scores = torch.sub(c_vals, _log_exp_noise_(q), out=q)
            token_ids[c_rows] = c_ids.gather(1, scores.argmax(dim=-1, keepdim=True)).squeeze(1)
        else:
            full_rows = rand_rows
        if full_rows.numel() and x.is_cuda and not state.has_top_k_or_p and ops.cuda_available():
            # No row has top-k/top-p (known on the host, so no sync): every row draws by
            # inverse CDF in the CUDA sampling kernel, one uniform per row, instead of
            # full-vocabulary noise (at batch 256 x 128k the race costs ~1.5 ms a step).
            xr = x if full_rows.numel() == N else x[full_rows]
            u = cls._uniform(full_rows, 1, slots, seeded_b, state).squeeze(1)
            token_ids[full_rows] = ops.sample(xr, uniform=u)
            return token_ids
        if full_rows.numel() and x.device.type == "cpu":
            # rows without top-k/top-p: inverse-CDF draw (no full-vocab noise). On GPUs
            # without the kernel module, or with filtered rows in the batch, the Gumbel race
            # below needs no scan and no host sync.
            fs = slots[full_rows]
            nofilt = (state.top_k[fs] >= V) & (state.top_p[fs] >= 1.0)
            if bool(nofilt.any()):
                ht = full_rows if bool(nofilt.all()) else full_rows[nofilt]
                token_ids[ht] = cls._sample_inverse_cdf(x, ht, slots, seeded_b, state, lse_of_x)
                full_rows = full_rows[~nofilt]
        if full_rows.numel():
            # rows with top-k/top-p not resolved by candidates: token-indexed noise over V
            q = cls._uniform(full_rows, V, slots, seeded_b, state)
            xr = x if full_rows.numel() == N else x[full_rows]
            scores = torch.sub(xr, _log_exp_noise_(q), out=q)
            token_ids[full_rows] = scores.argmax(dim=-1)
        return token_ids


# ---------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=1)
def _core_sampler():
    """llmcore._core.sample_inverse_cdf_f32, or None where the native module lacks it."""
    try:
        from llmcore import _core
        return _core.sample_inverse_cdf_f32
    except (ImportError, AttributeError):
        return None


@torch.no_grad()
def compute_prompt_logprobs(logits: torch.Tensor, next_token_ids: IndexLike, k: int
                            ) -> Tuple[torch.Tensor, Optional[torch.Tensor],
                                       Optional[torch.Tensor], torch.Tensor]:
    """Prompt logprobs from raw logits. Row i holds the logits predicting prompt token
    i+1, `next_token_ids[i]` is that token. Returns (logprob of the actual token [P],
    topk ids [P, k] or None, topk logprobs [P, k] or None, 1-based rank [P])."""
    logits = logits.float()
    ids = as_long_tensor(next_token_ids, logits.device)
    lse = torch.logsumexp(logits, dim=-1)
    tok = logits.gather(1, ids.unsqueeze(1)).squeeze(1)
    lp = tok - lse
    ranks = (logits > tok.unsqueeze(1)).sum(dim=-1) + 1
    if k and k > 0:
        tv, ti = logits.topk(min(int(k), logits.shape[1]), dim=-1)
        return lp, ti, tv - lse.unsqueeze(1), ranks
    return lp, None, None, ranks
