"""Sampling parameters for text generation (vLLM v0 compatible).

`SamplingParams` mirrors vLLM v0's class: same field names, defaults, normalisation
and validation. Every invalid value raises ``ValueError`` whose message starts with
the offending field's name (e.g. ``"top_p must be in (0, 1], got 1.5."``).

Normalisation done in ``__post_init__`` (as vLLM v0 does):
  * ``stop`` None -> [], str -> [str];  ``stop_token_ids`` None -> [].
  * ``best_of`` None -> ``n``.
  * ``logit_bias`` str keys -> int keys, values -> float.
  * greedy (temperature < 1e-5, not beam search): top_p=1.0, top_k=-1, min_p=0.0.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any, Dict, List, Optional, Set, Union

_SAMPLING_EPS = 1e-5
_MAX_N = 1024
_MAX_LOGIT_BIAS = 100.0


class SamplingType(IntEnum):
    GREEDY = 0
    RANDOM = 1
    RANDOM_SEED = 2
    BEAM = 3


def _is_int(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    try:
        operator.index(x)
    except TypeError:
        return False
    return True


def _is_number(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    try:
        float(x)
    except (TypeError, ValueError):
        return False
    return True


GUIDED_DECODING_BACKENDS = ("outlines", "lm-format-enforcer", "xgrammar")


@dataclass
class GuidedDecodingParams:
    """What a request's output must match (vLLM's `GuidedDecodingParams`).

    Exactly one of `json` (a JSON schema, as a dict or its JSON text), `regex`, `choice`
    (the output is one of these strings), `grammar` (EBNF) or `json_object` (any JSON
    object) is set. `backend` overrides the server's `--guided-decoding-backend` for this
    request; `whitespace_pattern` is the regex allowed between JSON tokens (outlines).
    """

    json: Optional[Union[str, Dict[str, Any]]] = None
    regex: Optional[str] = None
    choice: Optional[List[str]] = None
    grammar: Optional[str] = None
    json_object: Optional[bool] = None
    backend: Optional[str] = None
    whitespace_pattern: Optional[str] = None

    def __post_init__(self) -> None:
        kinds = [k for k in ("json", "regex", "choice", "grammar") if getattr(self, k) is not None]
        if self.json_object:
            kinds.append("json_object")
        if len(kinds) != 1:
            raise ValueError(
                "guided_decoding must set exactly one of json, regex, choice, grammar or "
                f"json_object, got {kinds or 'none'}.")
        if self.json is not None and not isinstance(self.json, (str, dict)):
            raise ValueError(f"guided_decoding.json must be a JSON schema (object or string), "
                             f"got {type(self.json).__name__}.")
        if self.regex is not None and not isinstance(self.regex, str):
            raise ValueError("guided_decoding.regex must be a string.")
        if self.grammar is not None and not isinstance(self.grammar, str):
            raise ValueError("guided_decoding.grammar must be a string.")
        if self.choice is not None:
            if (not isinstance(self.choice, (list, tuple)) or not self.choice
                    or not all(isinstance(c, str) for c in self.choice)):
                raise ValueError("guided_decoding.choice must be a non-empty list of strings.")
            self.choice = list(self.choice)
        if self.backend is not None:
            # "xgrammar:no-fallback"-style options are vLLM's; the name is what counts here
            name = self.backend.split(":", 1)[0]
            if name not in GUIDED_DECODING_BACKENDS:
                raise ValueError(f"guided_decoding.backend must be one of "
                                 f"{', '.join(GUIDED_DECODING_BACKENDS)}, got {self.backend!r}.")
        if self.whitespace_pattern is not None and not isinstance(self.whitespace_pattern, str):
            raise ValueError("guided_decoding.whitespace_pattern must be a string.")

    @property
    def kind(self) -> str:
        """'json' | 'regex' | 'choice' | 'grammar' | 'json_object'."""
        for k in ("json", "regex", "choice", "grammar"):
            if getattr(self, k) is not None:
                return k
        return "json_object"


@dataclass
class SamplingParams:
    n: int = 1
    best_of: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: Optional[int] = None
    use_beam_search: bool = False
    length_penalty: float = 1.0
    early_stopping: Union[bool, str] = False
    stop: Optional[Union[str, List[str]]] = None
    stop_token_ids: Optional[List[int]] = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: Optional[int] = 16
    min_tokens: int = 0
    logprobs: Optional[int] = None
    prompt_logprobs: Optional[int] = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    logit_bias: Optional[Dict[int, float]] = None
    truncate_prompt_tokens: Optional[int] = None
    # Structured output: the output must match this (None: unconstrained).
    guided_decoding: Optional[GuidedDecodingParams] = None
    # Stop token ids incl. EOS ids from generation config (vLLM's _all_stop_token_ids);
    # used for the min_tokens ban. Not a constructor argument in spirit: keep it last.
    _all_stop_token_ids: Set[int] = field(default_factory=set, repr=False)

    # ------------------------------------------------------------------ init
    def __post_init__(self) -> None:
        # --- normalisation of container fields
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        else:
            try:
                self.stop = list(self.stop)
            except TypeError:
                raise ValueError(f"stop must be a string or a list of strings, got {self.stop!r}.")
        if self.stop_token_ids is None:
            self.stop_token_ids = []
        else:
            try:
                self.stop_token_ids = list(self.stop_token_ids)
            except TypeError:
                raise ValueError(
                    f"stop_token_ids must be a list of ints, got {self.stop_token_ids!r}.")
        if self.best_of is None:
            self.best_of = self.n
        if isinstance(self.guided_decoding, dict):
            try:
                self.guided_decoding = GuidedDecodingParams(**self.guided_decoding)
            except TypeError as e:
                raise ValueError(f"guided_decoding: {e}.") from None
        elif self.guided_decoding is not None and not isinstance(self.guided_decoding,
                                                                 GuidedDecodingParams):
            raise ValueError(f"guided_decoding must be GuidedDecodingParams, got "
                             f"{type(self.guided_decoding).__name__}.")
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict):
                raise ValueError(
                    f"logit_bias must be a dict of token id -> bias, got {self.logit_bias!r}.")
            lb: Dict[int, float] = {}
            for k, v in self.logit_bias.items():
                try:
                    if isinstance(k, str):
                        key = int(k.strip())
                    elif _is_int(k):
                        key = operator.index(k)
                    else:
                        raise TypeError
                except (TypeError, ValueError):
                    raise ValueError(f"logit_bias keys must be token ids (int), got {k!r}.")
                if key < 0:
                    raise ValueError(f"logit_bias keys must be non-negative token ids, got {key}.")
                if not _is_number(v):
                    raise ValueError(f"logit_bias values must be numbers, got {v!r} for token {key}.")
                lb[key] = float(v)
            self.logit_bias = lb
        self._all_stop_token_ids = set(self._all_stop_token_ids or ())

        self._verify_args()
        if self.use_beam_search:
            self._verify_beam_search()
        else:
            self._verify_non_beam_search()
            if self.temperature < _SAMPLING_EPS:
                # Zero temperature means greedy sampling.
                self.top_p = 1.0
                self.top_k = -1
                self.min_p = 0.0
                self._verify_greedy_sampling()
        self._all_stop_token_ids.update(self.stop_token_ids)

    # ------------------------------------------------------------ validation
    def _verify_args(self) -> None:
        if not _is_int(self.n):
            raise ValueError(f"n must be an int, got {type(self.n).__name__}.")
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}.")
        if self.n > _MAX_N:
            raise ValueError(f"n must be at most {_MAX_N}, got {self.n}.")
        if not _is_int(self.best_of):
            raise ValueError(f"best_of must be an int, got {type(self.best_of).__name__}.")
        if self.best_of < self.n:
            raise ValueError(f"best_of must be greater than or equal to n, "
                             f"got n={self.n} and best_of={self.best_of}.")
        if self.best_of > _MAX_N:
            raise ValueError(f"best_of must be at most {_MAX_N}, got {self.best_of}.")
        for name, lo, hi in (("presence_penalty", -2.0, 2.0),
                             ("frequency_penalty", -2.0, 2.0)):
            v = getattr(self, name)
            if not _is_number(v) or not (lo <= float(v) <= hi):
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {v!r}.")
        rp = self.repetition_penalty
        if not _is_number(rp) or not math.isfinite(float(rp)) or float(rp) <= 0.0:
            raise ValueError(f"repetition_penalty must be a finite number greater than zero, "
                             f"got {rp!r}.")
        t = self.temperature
        if not _is_number(t) or not math.isfinite(float(t)) or float(t) < 0.0:
            raise ValueError(f"temperature must be a finite non-negative number, got {t!r}.")
        if not _is_number(self.top_p) or not (0.0 < float(self.top_p) <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}.")
        if not _is_int(self.top_k) or self.top_k < -1 or self.top_k == 0:
            raise ValueError(f"top_k must be -1 (disable), or at least 1, got {self.top_k!r}.")
        if not _is_number(self.min_p) or not (0.0 <= float(self.min_p) <= 1.0):
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p!r}.")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}.")
        if self.max_tokens is not None:
            if not _is_int(self.max_tokens) or self.max_tokens < 1:
                raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens!r}.")
        if not _is_int(self.min_tokens) or self.min_tokens < 0:
            raise ValueError(f"min_tokens must be greater than or equal to 0, "
                             f"got {self.min_tokens!r}.")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, "
                             f"got {self.min_tokens}.")
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v < 0):
                raise ValueError(f"{name} must be a non-negative int or None, got {v!r}.")
        if self.truncate_prompt_tokens is not None and (
                not _is_int(self.truncate_prompt_tokens) or self.truncate_prompt_tokens < 1):
            raise ValueError(f"truncate_prompt_tokens must be >= 1, "
                             f"got {self.truncate_prompt_tokens!r}.")
        for s in self.stop:
            if not isinstance(s, str):
                raise ValueError(f"stop must contain only strings, got {s!r}.")
            if s == "":
                raise ValueError("stop cannot contain an empty string.")
        for tid in self.stop_token_ids:
            if not _is_int(tid) or tid < 0:
                raise ValueError(f"stop_token_ids must be non-negative ints, got {tid!r}.")
        if self.logit_bias:
            for tok, b in self.logit_bias.items():
                if not math.isfinite(b) or not (-_MAX_LOGIT_BIAS <= b <= _MAX_LOGIT_BIAS):
                    raise ValueError(f"logit_bias values must be finite and in "
                                     f"[-{_MAX_LOGIT_BIAS:g}, {_MAX_LOGIT_BIAS:g}], "
                                     f"got {b!r} for token {tok}.")
        if self.early_stopping not in (True, False, "never") or (
                not isinstance(self.early_stopping, (bool, str))):
            raise ValueError(f"early_stopping must be True, False, or 'never', "
                             f"got {self.early_stopping!r}.")
        if not _is_number(self.length_penalty) or not math.isfinite(float(self.length_penalty)):
            raise ValueError(f"length_penalty must be a finite number, got {self.length_penalty!r}.")

    def _verify_beam_search(self) -> None:
        if self.best_of == 1:
            raise ValueError("best_of must be greater than 1 when using beam search. "
                             f"Got {self.best_of}.")
        if self.temperature > _SAMPLING_EPS:
            raise ValueError("temperature must be 0 when using beam search.")
        if self.top_p < 1.0 - _SAMPLING_EPS:
            raise ValueError("top_p must be 1 when using beam search.")
        if self.top_k != -1:
            raise ValueError("top_k must be -1 when using beam search.")
        if self.min_p > _SAMPLING_EPS:
            raise ValueError("min_p must be 0 when using beam search.")
        if self.seed is not None:
            raise ValueError("seed is not supported with beam search.")

    def _verify_non_beam_search(self) -> None:
        if self.early_stopping is not False:
            raise ValueError("early_stopping is not effective and must be False when "
                             "use_beam_search is False.")
        if (self.length_penalty < 1.0 - _SAMPLING_EPS
                or self.length_penalty > 1.0 + _SAMPLING_EPS):
            raise ValueError("length_penalty is not effective and must be the default value "
                             "of 1.0 when use_beam_search is False.")

    def _verify_greedy_sampling(self) -> None:
        if self.best_of > 1:
            raise ValueError("best_of must be 1 when using greedy sampling. "
                             f"Got {self.best_of}.")

    # ---------------------------------------------------------------- helpers
    def update_from_generation_config(self, generation_config: Dict[str, Any],
                                      model_eos_token_id: Optional[int] = None) -> None:
        """Add the model's EOS ids (vLLM v0 semantics): the primary EOS goes into
        all_stop_token_ids (for the min_tokens ban); extra EOS ids from the generation
        config also become stop_token_ids unless ignore_eos."""
        if model_eos_token_id is not None:
            self._all_stop_token_ids.add(model_eos_token_id)
        eos_ids = generation_config.get("eos_token_id") if generation_config else None
        if eos_ids is not None:
            eos_ids = {eos_ids} if isinstance(eos_ids, int) else set(eos_ids)
            if model_eos_token_id is not None:
                eos_ids.discard(model_eos_token_id)
            if eos_ids:
                self._all_stop_token_ids.update(eos_ids)
                if not self.ignore_eos:
                    eos_ids.update(self.stop_token_ids)
                    self.stop_token_ids = sorted(eos_ids)

    @property
    def all_stop_token_ids(self) -> Set[int]:
        return self._all_stop_token_ids

    @property
    def sampling_type(self) -> SamplingType:
        if self.use_beam_search:
            return SamplingType.BEAM
        if self.temperature < _SAMPLING_EPS:
            return SamplingType.GREEDY
        if self.seed is not None:
            return SamplingType.RANDOM_SEED
        return SamplingType.RANDOM

    @property
    def output_text_buffer_length(self) -> int:
        """vLLM v0: chars to hold back when streaming so a stop string is never
        partially emitted. (stop_checker.stop_holdback_len is the tighter version.)"""
        if self.stop and not self.include_stop_str_in_output:
            return max(len(s) for s in self.stop) - 1
        return 0

    def clone(self) -> "SamplingParams":
        # the guided-decoding spec is shared, not copied: nothing changes it once made, and
        # a JSON schema's deep copy cost a guided request ~0.1 ms
        memo = {} if self.guided_decoding is None else {id(self.guided_decoding):
                                                        self.guided_decoding}
        return copy.deepcopy(self, memo)

    def __repr__(self) -> str:
        parts = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                          if f.repr)
        return f"SamplingParams({parts})"
