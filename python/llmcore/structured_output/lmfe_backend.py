"""lm-format-enforcer: a character-level parser (JSON schema or regex) walked over a prefix
tree of the vocabulary for every new prefix. No ahead-of-time automaton, so compiling is
instant but each step's mask costs milliseconds (the slowest of the three backends)."""

from __future__ import annotations

from typing import Any

import numpy as np

from llmcore.structured_output.backend import (GrammarCompileError, GrammarMatcher,
                                               StructuredOutputBackend, VocabInfo, allow_token)
from llmcore.structured_output.spec import GrammarSpec, choice_regex


def tokenizer_data(vocab: VocabInfo) -> Any:
    """lm-format-enforcer's per-tokenizer tables. (Its transformers integration module does
    not import under transformers 5, so the regular-token list is built here from the same
    public constructor: (id, text as it decodes after another token, starts a word).)"""
    from lmformatenforcer import TokenEnforcerTokenizerData
    tok = vocab.tokenizer
    special = set(tok.all_special_ids)
    n = min(len(tok), vocab.vocab_size)
    ids = [i for i in range(n) if i not in special]
    zero = tok.encode("0", add_special_tokens=False)[-1]
    after_zero = tok.batch_decode([[zero, i] for i in ids])
    alone = tok.batch_decode([[i] for i in ids])
    regular = [(i, a[1:], len(a) - 1 > len(b)) for i, a, b in zip(ids, after_zero, alone)]

    def decode(token_ids: list) -> str:
        return tok.decode(token_ids)

    eos = list(vocab.stop_token_ids) or tok.eos_token_id
    return TokenEnforcerTokenizerData(regular, decode, eos, True, vocab.vocab_size)


class LMFEMatcher(GrammarMatcher):
    __slots__ = ("_enforcer", "_tokens", "_eos", "_terminated")

    def __init__(self, enforcer: Any, eos_ids: set):
        self._enforcer = enforcer
        self._tokens: list = []
        self._eos = eos_ids
        self._terminated = False

    def _allowed(self):
        return self._enforcer.get_allowed_tokens(self._tokens)

    def accept_token(self, token_id: int) -> bool:
        try:
            if self._terminated or not self._allowed().is_token_allowed(int(token_id)):
                return False
        except Exception:  # noqa: BLE001 - the parser failed on this prefix: refuse, never raise
            return False
        self._tokens.append(int(token_id))
        if token_id in self._eos:
            self._terminated = True
        return True

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        if self._terminated:
            return
        try:
            words = self._allowed().allowed_tokens.numpy()
        except Exception:  # noqa: BLE001 - the parser failed on this prefix: only stop tokens
            for t in self._eos:
                allow_token(bitmask[row], t)
            return
        bitmask[row, :words.shape[0]] = words

    def rollback(self, num_tokens: int) -> None:
        if num_tokens > 0:
            del self._tokens[-num_tokens:]
            self._terminated = bool(self._tokens) and self._tokens[-1] in self._eos

    def is_terminated(self) -> bool:
        return self._terminated


class LMFormatEnforcerBackend(StructuredOutputBackend):
    name = "lm-format-enforcer"

    def __init__(self, vocab: VocabInfo, fill_threads: int = 1):
        super().__init__(vocab, fill_threads)
        self._data = tokenizer_data(vocab)
        self._eos = set(vocab.stop_token_ids) | {vocab.tokenizer.eos_token_id}

    def compile(self, spec: GrammarSpec) -> Any:
        """A parser factory: lm-format-enforcer parsers are stateful, one per sequence."""
        from lmformatenforcer import JsonSchemaParser, RegexParser
        if spec.kind == "grammar":
            raise GrammarCompileError("guided_decoding.grammar: the lm-format-enforcer backend "
                                      "does not support context-free grammars; use xgrammar")
        try:
            if spec.kind == "json":
                schema = spec.schema
                JsonSchemaParser(schema)   # fail now on what it cannot handle
                return lambda: JsonSchemaParser(schema)
            if spec.kind == "json_object":
                # JsonSchemaParser(None) admits any JSON value; json_object means an object
                return lambda: JsonSchemaParser({"type": "object"})
            regex = spec.value if spec.kind == "regex" else choice_regex(spec.value)
            RegexParser(regex)
            return lambda: RegexParser(regex)
        except Exception as e:  # noqa: BLE001 - its parsers raise various types
            raise GrammarCompileError(f"guided_decoding.{spec.kind}: lm-format-enforcer cannot "
                                      f"compile it: {e}") from None

    def new_matcher(self, compiled: Any) -> GrammarMatcher:
        from lmformatenforcer import TokenEnforcer
        return LMFEMatcher(TokenEnforcer(self._data, compiled()), self._eos)
