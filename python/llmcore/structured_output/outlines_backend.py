"""outlines (outlines-core): the spec becomes a regex (JSON schemas through outlines-core's
schema-to-regex), compiled into a token-level DFA index over the vocabulary. Context-free
grammars are not regular: refused (use xgrammar)."""

from __future__ import annotations

from typing import Any

import numpy as np

from llmcore.structured_output.backend import (GrammarCompileError, GrammarMatcher,
                                               StructuredOutputBackend, VocabInfo,
                                               allow_token)
from llmcore.structured_output.spec import GrammarSpec, choice_regex

MAX_ROLLBACK_TOKENS = 64
# outlines-core has no regex for "any JSON object" (not regular): a JSON object whose
# values are scalars or flat arrays/objects, nested this deep
_JSON_OBJECT_SCHEMA = '{"type": "object"}'


class OutlinesMatcher(GrammarMatcher):
    __slots__ = ("_guide", "_eos", "_terminated", "_accepted")

    def __init__(self, guide: Any, eos_ids: set):
        self._guide = guide
        self._eos = eos_ids
        self._terminated = False
        self._accepted: list = []   # True where the token was a stop token (not in the DFA)

    def accept_token(self, token_id: int) -> bool:
        if self._terminated:
            return False
        if token_id in self._eos:
            if not self._guide.is_finished():
                return False
            self._terminated = True
            self._accepted.append(True)
            return True
        if not self._guide.accepts_tokens([int(token_id)]):
            return False
        self._guide.advance(int(token_id), return_tokens=False)
        self._accepted.append(False)
        return True

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        out = bitmask[row]
        if self._terminated:
            return
        self._guide.write_mask_into(out.ctypes.data, out.size, 4)
        if self._guide.is_finished():
            for t in self._eos:   # outlines-core's final states allow its own EOS only
                allow_token(out, t)

    def rollback(self, num_tokens: int) -> None:
        dfa_steps = 0
        for _ in range(num_tokens):
            if self._accepted.pop():
                self._terminated = False
            else:
                dfa_steps += 1
        if dfa_steps:
            self._guide.rollback_state(dfa_steps)

    def is_terminated(self) -> bool:
        return self._terminated


class OutlinesBackend(StructuredOutputBackend):
    name = "outlines"

    def __init__(self, vocab: VocabInfo, fill_threads: int = 1):
        super().__init__(vocab, fill_threads)
        from outlines.backends.outlines_core import OutlinesCoreBackend
        from outlines.models.transformers import TransformerTokenizer
        tok = TransformerTokenizer(vocab.tokenizer)
        # outlines' own adapter: token strings as the regex sees them (BPE markers decoded)
        self._vocabulary = OutlinesCoreBackend.create_outlines_core_vocabulary(
            {t: i for t, i in tok.get_vocab().items() if i < vocab.vocab_size},
            tok.eos_token_id, tok.eos_token, tok.convert_token_to_string)
        self._eos = set(vocab.stop_token_ids) | {tok.eos_token_id}

    def _regex(self, spec: GrammarSpec) -> str:
        from outlines_core.json_schema import build_regex_from_schema
        if spec.kind == "json":
            return build_regex_from_schema(spec.value, spec.whitespace_pattern)
        if spec.kind == "json_object":
            return build_regex_from_schema(_JSON_OBJECT_SCHEMA, spec.whitespace_pattern)
        if spec.kind == "regex":
            return spec.value
        if spec.kind == "choice":
            return choice_regex(spec.value)
        raise GrammarCompileError("guided_decoding.grammar: the outlines backend does not "
                                  "support context-free grammars; use the xgrammar backend")

    def compile(self, spec: GrammarSpec) -> Any:
        import outlines_core
        regex = self._regex(spec)
        try:
            return outlines_core.Index(regex, self._vocabulary)
        except Exception as e:  # noqa: BLE001 - outlines-core raises ValueError/RuntimeError
            raise GrammarCompileError(f"guided_decoding.{spec.kind}: outlines cannot compile it: "
                                      f"{e}") from None

    def new_matcher(self, compiled: Any) -> GrammarMatcher:
        import outlines_core
        return OutlinesMatcher(outlines_core.Guide(compiled, max_rollback=MAX_ROLLBACK_TOKENS),
                               self._eos)
