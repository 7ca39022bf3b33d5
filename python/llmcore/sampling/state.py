"""Persistent per-slot sampling state (vLLM V1 "persistent batch" style).

The engine gives every running sequence a slot in [0, max_slots). `add()` writes the
sequence's sampling parameters into per-slot tensors once; each decode step only
gathers rows by slot index (`tensor[slots]`), so building the sampler's inputs is
never a Python loop over sequences. The only per-row Python work in a step is
drawing noise from the private torch.Generator of *seeded* rows.

Feature bookkeeping is kept as Python sets of active slots (`_topk_slots` ...), so
`Sampler.sample` skips whole stages in O(1) when no active slot needs them.

Penalty history: `output_counts` int32[max_slots, vocab] (token counts of the
generated tokens) and `prompt_mask` bool[max_slots, vocab] (tokens present in the
prompt, for the repetition penalty) are allocated lazily, the first time a slot with
such a penalty is added, and are only updated while some active slot uses them.
Memory: max_slots * vocab * 5 bytes (256 slots x 49152 vocab = 63 MB).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Set, Union

import numpy as np
import torch

from llmcore.sampling_params import SamplingParams, _SAMPLING_EPS

IndexLike = Union[torch.Tensor, np.ndarray, Sequence[int]]


def as_long_tensor(x: IndexLike, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        t = torch.as_tensor(list(x) if not isinstance(x, list) else x, dtype=torch.long)
    if t.dtype != torch.long:
        t = t.long()
    if t.device != device:
        if t.device.type == "cpu" and device.type == "cuda":
            # from pinned memory without blocking: a pageable copy would synchronize the
            # stream, i.e. wait for the step the engine has queued meanwhile
            t = t.pin_memory().to(device, non_blocking=True)
        else:
            t = t.to(device)
    return t.reshape(-1)


def check_params_against_vocab(params: SamplingParams, vocab_size: int) -> None:
    """Validation that needs the vocabulary size. Call it in the front end (raises
    ValueError naming the field); `SamplingBatchState.add` silently drops ids >= vocab."""
    if params.logit_bias:
        for tok in params.logit_bias:
            if not 0 <= tok < vocab_size:
                raise ValueError(f"logit_bias token id {tok} is out of vocabulary "
                                 f"range [0, {vocab_size}).")
    for tok in params.stop_token_ids:
        if not 0 <= tok < vocab_size:
            raise ValueError(f"stop_token_ids contains {tok}, out of vocabulary "
                             f"range [0, {vocab_size}).")


class SamplingBatchState:
    def __init__(self, max_slots: int, vocab_size: int, max_model_len: int,
                 device: Union[str, torch.device] = "cpu",
                 eos_token_id: Optional[int] = None, seed: Optional[int] = None):
        self.max_slots = S = int(max_slots)
        self.vocab_size = V = int(vocab_size)
        self.max_model_len = int(max_model_len)
        self.device = dev = torch.device(device)
        self.eos_token_id = eos_token_id

        f32 = dict(dtype=torch.float32, device=dev)
        i64 = dict(dtype=torch.long, device=dev)
        b = dict(dtype=torch.bool, device=dev)
        self.temperature = torch.ones(S, **f32)     # 1.0 for greedy rows (vLLM v0)
        self.top_p = torch.ones(S, **f32)
        self.top_k = torch.full((S,), V, **i64)     # V == disabled
        self.min_p = torch.zeros(S, **f32)
        self.presence_penalty = torch.zeros(S, **f32)
        self.frequency_penalty = torch.zeros(S, **f32)
        self.repetition_penalty = torch.ones(S, **f32)
        self.min_tokens = torch.zeros(S, **i64)
        self.num_generated = torch.zeros(S, **i64)
        self.num_logprobs = torch.full((S,), -1, **i64)  # -1 == None
        self.is_greedy = torch.ones(S, **b)
        self.is_seeded = torch.zeros(S, **b)
        self.has_penalty = torch.zeros(S, **b)
        self.active = torch.zeros(S, **b)

        self.output_counts: Optional[torch.Tensor] = None  # int32 [S, V], lazy
        self.prompt_mask: Optional[torch.Tensor] = None    # bool [S, V], lazy

        self.generator = torch.Generator(device=dev)       # shared by unseeded rows
        if seed is not None:
            self.generator.manual_seed(int(seed))
        else:
            self.generator.seed()
        self.generators: Dict[int, torch.Generator] = {}

        self._params: list = [None] * S
        # Feature sets (active slots needing a stage).
        self._random_slots: Set[int] = set()
        self._temp_slots: Set[int] = set()       # random rows with temperature != 1
        self._topk_slots: Set[int] = set()
        self._topp_slots: Set[int] = set()
        self._minp_slots: Set[int] = set()
        self._penalty_slots: Set[int] = set()
        self._rep_slots: Set[int] = set()
        self._mintok_slots: Set[int] = set()
        self._bias_slots: Set[int] = set()
        self._seeded_slots: Set[int] = set()
        self._logprob_slots: Set[int] = set()

        # Sparse per-slot (token, value) lists, concatenated lazily into index tensors.
        self._bias: Dict[int, tuple] = {}
        self._bias_cat: Optional[tuple] = None
        self._mintok: Dict[int, torch.Tensor] = {}
        self._mintok_cat: Optional[tuple] = None
        self._inv = torch.full((S,), -1, **i64)   # scratch: slot -> row in batch

    # ------------------------------------------------------------------ slots
    def grow(self, new_max_slots: int) -> None:
        """Raise max_slots (existing slots keep their state; new ones are inactive)."""
        S, N = self.max_slots, int(new_max_slots)
        if N <= S:
            return
        V = self.vocab_size
        fills = dict(temperature=1.0, top_p=1.0, top_k=V, min_p=0.0, presence_penalty=0.0,
                     frequency_penalty=0.0, repetition_penalty=1.0, min_tokens=0,
                     num_generated=0, num_logprobs=-1, is_greedy=True, is_seeded=False,
                     has_penalty=False, active=False, _inv=-1)
        for name, fill in fills.items():
            t = getattr(self, name)
            setattr(self, name, torch.cat([t, torch.full((N - S,) + t.shape[1:], fill,
                                                         dtype=t.dtype, device=t.device)]))
        for name in ("output_counts", "prompt_mask"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, torch.cat([t, torch.zeros((N - S,) + t.shape[1:],
                                                              dtype=t.dtype, device=t.device)]))
        self._params.extend([None] * (N - S))
        self.max_slots = N

    def add(self, slot: int, params: SamplingParams, prompt_token_ids: Sequence[int],
            output_token_ids: Sequence[int] = ()) -> None:
        """Put a sequence into `slot` (replacing whatever was there). `output_token_ids`
        are tokens already generated (e.g. a resumed/preempted or forked sequence)."""
        slot = int(slot)
        if not 0 <= slot < self.max_slots:
            raise IndexError(f"slot {slot} out of range [0, {self.max_slots})")
        if self._params[slot] is not None:
            self.remove(slot)
        V = self.vocab_size
        dev = self.device
        self._params[slot] = params
        self.active[slot] = True

        greedy = params.temperature < _SAMPLING_EPS or params.use_beam_search
        self.is_greedy[slot] = greedy
        if greedy:
            self.temperature[slot] = 1.0
            self.top_p[slot] = 1.0
            self.top_k[slot] = V
            self.min_p[slot] = 0.0
        else:
            self._random_slots.add(slot)
            self.temperature[slot] = float(params.temperature)
            if abs(params.temperature - 1.0) > 1e-7:
                self._temp_slots.add(slot)
            k = V if params.top_k == -1 else min(int(params.top_k), V)
            self.top_k[slot] = k
            if k < V:
                self._topk_slots.add(slot)
            self.top_p[slot] = float(params.top_p)
            if params.top_p < 1.0 - 1e-7:
                self._topp_slots.add(slot)
            self.min_p[slot] = float(params.min_p)
            if params.min_p > 0.0:
                self._minp_slots.add(slot)
            if params.seed is not None:
                g = torch.Generator(device=dev)
                g.manual_seed(int(params.seed))
                self.generators[slot] = g
                self._seeded_slots.add(slot)
                self.is_seeded[slot] = True

        # Penalties.
        pp, fp, rp = (float(params.presence_penalty), float(params.frequency_penalty),
                      float(params.repetition_penalty))
        self.presence_penalty[slot] = pp
        self.frequency_penalty[slot] = fp
        self.repetition_penalty[slot] = rp
        has_pen = pp != 0.0 or fp != 0.0 or rp != 1.0
        self.has_penalty[slot] = has_pen
        if has_pen:
            self._penalty_slots.add(slot)
            if self.output_counts is None:
                self.output_counts = torch.zeros(self.max_slots, V, dtype=torch.int32,
                                                 device=dev)
            row = self.output_counts[slot]
            row.zero_()
            out = _filter_vocab(as_long_tensor(output_token_ids, dev), V)
            if out.numel():
                row.index_add_(0, out, torch.ones_like(out, dtype=torch.int32))
            if rp != 1.0:
                self._rep_slots.add(slot)
                if self.prompt_mask is None:
                    self.prompt_mask = torch.zeros(self.max_slots, V, dtype=torch.bool,
                                                   device=dev)
                pm = self.prompt_mask[slot]
                pm.zero_()
                pr = _filter_vocab(as_long_tensor(prompt_token_ids, dev), V)
                if pr.numel():
                    pm[pr] = True

        self.num_generated[slot] = len(output_token_ids)

        # min_tokens: ban EOS and stop token ids until min_tokens tokens exist.
        self.min_tokens[slot] = int(params.min_tokens)
        if params.min_tokens > 0:
            ban = set(params.all_stop_token_ids) | set(params.stop_token_ids)
            if self.eos_token_id is not None and not params.ignore_eos:
                ban.add(int(self.eos_token_id))
            ban = sorted(t for t in ban if 0 <= t < V)
            if ban:
                self._mintok[slot] = torch.tensor(ban, dtype=torch.long, device=dev)
                self._mintok_slots.add(slot)
                self._mintok_cat = None

        if params.logit_bias:
            items = [(t, b) for t, b in params.logit_bias.items() if 0 <= t < V and b != 0.0]
            if items:
                toks = torch.tensor([t for t, _ in items], dtype=torch.long, device=dev)
                vals = torch.tensor([b for _, b in items], dtype=torch.float32, device=dev)
                self._bias[slot] = (toks, vals)
                self._bias_slots.add(slot)
                self._bias_cat = None

        nl = -1 if params.logprobs is None else int(params.logprobs)
        self.num_logprobs[slot] = nl
        if nl >= 0:
            self._logprob_slots.add(slot)

    def remove(self, slot: int) -> None:
        slot = int(slot)
        if self._params[slot] is None:
            return
        self._params[slot] = None
        self.active[slot] = False
        for s in (self._random_slots, self._temp_slots, self._topk_slots, self._topp_slots,
                  self._minp_slots, self._penalty_slots, self._rep_slots,
                  self._seeded_slots, self._logprob_slots):
            s.discard(slot)
        if slot in self._mintok_slots:
            self._mintok_slots.discard(slot)
            del self._mintok[slot]
            self._mintok_cat = None
        if slot in self._bias_slots:
            self._bias_slots.discard(slot)
            del self._bias[slot]
            self._bias_cat = None
        self.generators.pop(slot, None)
        self.is_seeded[slot] = False
        self.has_penalty[slot] = False
        self.is_greedy[slot] = True
        self.num_logprobs[slot] = -1

    def append_tokens(self, slots: IndexLike, tokens: IndexLike, in_vocab: bool = False) -> None:
        """Record newly generated tokens (one entry per (slot, token); a slot may
        repeat, e.g. for speculative decoding). in_vocab: the caller vouches that every id
        is in the vocabulary (the sampler's own output), so no check syncs the device."""
        ok_np = None
        if not isinstance(tokens, torch.Tensor) and self._penalty_slots:
            # out-of-vocabulary ids are found on the host (no device sync)
            t_np = np.asarray(tokens, dtype=np.int64).reshape(-1)
            ok_np = (t_np >= 0) & (t_np < self.vocab_size)
        slots = as_long_tensor(slots, self.device)
        tokens = as_long_tensor(tokens, self.device)
        if slots.numel() == 0:
            return
        self.num_generated.index_add_(0, slots, torch.ones_like(slots))
        if self._penalty_slots and self.output_counts is not None:
            if in_vocab:
                pass
            elif ok_np is not None:
                if not ok_np.all():
                    keep = as_long_tensor(np.flatnonzero(ok_np), self.device)
                    slots, tokens = slots[keep], tokens[keep]
            else:
                ok = (tokens >= 0) & (tokens < self.vocab_size)
                if not bool(ok.all()):
                    slots, tokens = slots[ok], tokens[ok]
            self.output_counts.index_put_(
                (slots, tokens), torch.ones(slots.shape, dtype=torch.int32, device=self.device),
                accumulate=True)

    def get_params(self, slot: int) -> Optional[SamplingParams]:
        return self._params[int(slot)]

    @property
    def num_active(self) -> int:
        return sum(p is not None for p in self._params)

    @property
    def has_top_k_or_p(self) -> bool:
        """Some active slot filters by top-k or top-p (known on the host: no device sync)."""
        return bool(self._topk_slots or self._topp_slots)

    # -------------------------------------------------------- sampler helpers
    def _bias_index(self):
        if self._bias_cat is None:
            ss, ts, vs = [], [], []
            for slot, (t, v) in self._bias.items():
                ss.append(torch.full_like(t, slot))
                ts.append(t)
                vs.append(v)
            self._bias_cat = (torch.cat(ss), torch.cat(ts), torch.cat(vs))
        return self._bias_cat

    def _mintok_index(self):
        if self._mintok_cat is None:
            ss, ts = [], []
            for slot, t in self._mintok.items():
                ss.append(torch.full_like(t, slot))
                ts.append(t)
            self._mintok_cat = (torch.cat(ss), torch.cat(ts))
        return self._mintok_cat


def _filter_vocab(ids: torch.Tensor, V: int) -> torch.Tensor:
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= V):
        ids = ids[(ids >= 0) & (ids < V)]
    return ids
