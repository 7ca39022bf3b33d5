"""The beam-search algorithm (vLLM v0 semantics: length_penalty, early_stopping), on plain
token lists: one step takes each live beam's top 2 x width next-token logprobs and keeps
the best `width` continuations; hypotheses that end (a stop id, a length limit) are kept
here and scored with the length penalty. `engine/beam_driver.py` runs it above the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection, Optional


@dataclass
class Hypothesis:
    token_ids: list
    cumulative_logprob: float
    finish_reason: str
    score: float
    stop_reason: Optional[int] = None    # the stop token id, when not the primary EOS


@dataclass
class Beam:
    """A live hypothesis: the tokens after the prompt and their summed logprob."""
    output_token_ids: list
    cumulative_logprob: float = 0.0


@dataclass
class BeamState:
    width: int
    length_penalty: float
    early_stopping: object               # True, False or "never"
    finished: list = field(default_factory=list)   # Hypothesis


def beam_score(cum_logprob: float, seq_len: int, length_penalty: float) -> float:
    return cum_logprob / (max(seq_len, 1) ** length_penalty)


@dataclass
class BeamDecision:
    """One step's outcome for one request."""
    # (parent_seq_state, token_id, new_cum_logprob, reuse_parent) for beams that continue
    continue_beams: list
    finished_parents: list               # SeqStates to finish (not chosen, or request done)
    done: bool


def beam_candidates_from_topk(beams: list, topk: tuple, k: int) -> list:
    """The k best (beam index, token, new cumulative logprob) over all beams, best first,
    from each beam's own top candidates (ids [N][m], log-softmax values [N][m], m >= k):
    the global top k over beams x vocabulary is always among the per-beam top k."""
    ids, lps = topk
    cands = []
    for b, beam in enumerate(beams):
        cum = beam.cumulative_logprob
        for tok, lp in zip(ids[b], lps[b]):
            cands.append((cum + lp, b, tok))
    # stable by (beam, rank) for equal scores, as a flat top-k over [N, V] in row order
    cands.sort(key=lambda c: -c[0])
    return [(b, tok, val) for val, b, tok in cands[:k]]


def beam_stop_ids(eos_token_id: Optional[int], ignore_eos: bool,
                  stop_token_ids: Collection[int]) -> frozenset:
    """Token ids that end a hypothesis: the primary EOS (unless ignore_eos) and the
    request's stop_token_ids, which hold the generation config's other EOS ids (added by
    the front end unless ignore_eos), as vLLM's stop checker does for beams."""
    ids = set(stop_token_ids or ())
    if eos_token_id is not None and not ignore_eos:
        ids.add(eos_token_id)
    return frozenset(ids)


def step_beams(state: BeamState, beams: list, topk: tuple, stop_ids: Collection[int],
               max_tokens: int, at_max_len: Callable[[int], bool],
               eos_token_id: Optional[int] = None) -> BeamDecision:
    """beams: live sequences (with output_token_ids, cumulative_logprob) in row order of
    topk = (ids [N][m], log-softmaxed logprobs [N][m]), each row's top m >= 2 x width.
    stop_ids (`beam_stop_ids`) end a hypothesis with "stop"; its stop_reason is the token
    unless it is eos_token_id."""
    width = state.width
    # 2 * width candidates, so finished (EOS) ones can be set aside without running out.
    chosen: list = []
    for b, token, val in beam_candidates_from_topk(beams, topk, 2 * width):
        parent = beams[b]
        new_len = len(parent.output_token_ids) + 1
        if token in stop_ids:
            toks = parent.output_token_ids + [token]
            state.finished.append(Hypothesis(toks, val, "stop",
                                             beam_score(val, new_len, state.length_penalty),
                                             None if token == eos_token_id else int(token)))
            continue
        if len(chosen) < width:
            chosen.append((parent, token, val))
        if len(chosen) >= width and len(state.finished) >= width:
            break

    # Beams that reached max_tokens or max_model_len become finished hypotheses.
    still = []
    for parent, token, val in chosen:
        new_len = len(parent.output_token_ids) + 1
        if new_len >= max_tokens or at_max_len(new_len):
            state.finished.append(Hypothesis(parent.output_token_ids + [token], val, "length",
                                             beam_score(val, new_len, state.length_penalty)))
        else:
            still.append((parent, token, val))

    done = not still or _is_done(state, still)
    used = set()
    continue_beams = []
    if not done:
        for parent, token, val in still:
            reuse = id(parent) not in used
            used.add(id(parent))
            continue_beams.append((parent, token, val, reuse))
    finished_parents = [b for b in beams if id(b) not in used]
    if done:
        # Live beams join the candidates when the search ends early.
        for parent, token, val in still:
            new_len = len(parent.output_token_ids) + 1
            state.finished.append(Hypothesis(parent.output_token_ids + [token], val, "length",
                                             beam_score(val, new_len, state.length_penalty)))
    return BeamDecision(continue_beams, finished_parents, done)


def _is_done(state: BeamState, live: list) -> bool:
    width = state.width
    if len(state.finished) < width:
        return False
    if state.early_stopping is True:
        return True
    worst_kept = sorted((h.score for h in state.finished), reverse=True)[width - 1]
    best_live_cum = max(v for _, _, v in live)
    cur_len = max(len(p.output_token_ids) + 1 for p, _, _ in live)
    if state.early_stopping == "never" and state.length_penalty > 0.0:
        # Best case: the live beam keeps its score up to the longest length it could reach.
        return False
    best_live = beam_score(best_live_cum, cur_len, state.length_penalty)
    return worst_kept >= best_live


def best_hypotheses(state: BeamState, n: int) -> list:
    return sorted(state.finished, key=lambda h: h.score, reverse=True)[:n]
