"""The engine core's guided-decoding steps (a mixin of EngineCore, engine/core.py): requests
admitted once their grammar compiled, a step's sampled tokens fed to the grammars, the
matchers whose next mask a step needs, and a token's grammar verdict turned into a stop.

The pipelined loop feeds step k-1's tokens before it launches step k, so that step k's mask
fills (off the loop's thread where the backend can: StructuredOutputManager.start_fill)
while the loop launches k and processes k-1.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from llmcore.config.engine_config import EngineConfig
from llmcore.engine.core_state import CoreRequest, CoreSeq, OutputBatch
from llmcore.structured_output.manager import StructuredOutputManager

logger = logging.getLogger(__name__)


def grammar_manager(config: EngineConfig, eos_token_id: Optional[int]) -> StructuredOutputManager:
    mc = config.model_config

    def load():  # only when the first guided request arrives, in a compile thread
        from llmcore.tokenizer.loader import load_tokenizer
        return load_tokenizer(mc)

    stop = ([eos_token_id] if eos_token_id is not None else []) + list(mc.eos_token_ids or [])
    return StructuredOutputManager(config.structured_output_config, load, mc.vocab_size,
                                   list(dict.fromkeys(stop)))


class GuidedStepsMixin:
    """EngineCore's grammar work; uses its grammars, _awaiting_grammar, _schedule_request
    and _finish_request."""

    def _admit_compiled(self, batch: OutputBatch) -> None:
        """Schedule the requests whose grammar is ready; fail those whose grammar failed."""
        for rid, req in list(self._awaiting_grammar.items()):
            try:
                if not self.grammars.ready(req.grammar):
                    continue
            except ValueError as e:
                del self._awaiting_grammar[rid]
                batch.error(rid, str(e))
                self._finish_request(req)
                continue
            del self._awaiting_grammar[rid]
            try:
                self._schedule_request(req)
            except Exception as e:  # noqa: BLE001 - a backend's matcher failed: this request only
                logger.exception("request %s: cannot start its grammar matcher", rid)
                batch.error(rid, f"guided_decoding.{req.grammar.spec.kind}: {e}")
                self._finish_request(req)

    def _accept_inflight(self, inflight) -> Optional[dict]:
        """Feed a launched step's sampled tokens to its sequences' grammars (waits for the
        tokens): {seq id: (accepted, terminated)}, which _finish_inflight then reads
        instead of asking the matchers. Each token's bit in the mask it was sampled under
        goes with it: where that settles the verdict, the accept itself runs with the
        next mask's fill, off this thread (StructuredOutputManager.feed)."""
        pending, normal, _, _, mask = inflight
        if mask is None:
            return None
        g_rows, bitmask = mask
        sampled = pending.get().sampled_token_ids
        matchers, tokens, seq_ids, mask_rows = [], [], [], []
        for j, i in enumerate(g_rows):
            req, seq = normal[i]
            if seq.matcher is None or seq.finished or req.finished:
                continue
            matchers.append(seq.matcher)
            tokens.append(sampled[i])
            seq_ids.append(seq.seq_id)
            mask_rows.append(j)
        if not matchers:
            return None
        toks = np.asarray(tokens, dtype=np.int64)
        words = bitmask.view(np.uint32)[np.asarray(mask_rows), toks >> 5]
        allowed = ((words >> (toks & 31).astype(np.uint32)) & 1).astype(bool).tolist()
        return dict(zip(seq_ids, self.grammars.feed(matchers, tokens, allowed)))

    @staticmethod
    def _fill_matcher(req: CoreRequest, seq: CoreSeq, verdicts: Optional[dict]):
        """The matcher whose next mask this row needs; None (allow all) for a sequence that
        stops on its last token, whose row is discarded."""
        if seq.finished or req.finished:
            return None
        v = verdicts.get(seq.seq_id) if verdicts else None
        return None if v is not None and (not v[0] or v[1]) else seq.matcher

    def _advance_grammar(self, req: CoreRequest, seq: CoreSeq, tok: int, reason, stop_reason,
                         verdict: Optional[tuple] = None):
        """Feed the sampled token to the sequence's matcher (verdict: the (accepted,
        terminated) of a token fed already): the grammar's end (a stop token accepted)
        stops the sequence. A token the grammar refuses can only come from a row whose
        every token was masked (e.g. min_tokens banning the EOS the grammar requires): the
        sequence stops there."""
        accepted, terminated = verdict if verdict is not None else \
            self.grammars.accept_tokens([seq.matcher], [tok])[0]
        if not accepted:
            logger.warning("request %s: token %d does not match its grammar; stopping",
                           req.request_id, tok)
            return "stop", None
        if terminated and reason != "stop":
            return "stop", None
        return reason, stop_reason
