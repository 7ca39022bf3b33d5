"""Request checks that the HTTP and gRPC front ends share: building SamplingParams from a
request's fields, what a streaming request cannot ask for, and token-id ranges.

Errors are `InvalidField` (a ValueError) carrying the field's name; each front end words
them in its own protocol's terms (HTTP 400 with `param`, gRPC INVALID_ARGUMENT).
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

UNSUPPORTED = "unsupported"  # a field this engine's SamplingParams does not take
WRONG_TYPE = "type"          # SamplingParams raised TypeError
BAD_VALUE = "value"          # SamplingParams raised ValueError / OverflowError (names the field)


class InvalidField(ValueError):
    def __init__(self, message: str, field: Optional[str] = None, kind: str = BAD_VALUE):
        super().__init__(message)
        self.message = message
        self.field = field
        self.kind = kind


def sampling_params_cls():
    from llmcore.sampling_params import SamplingParams  # noqa: PLC0415 (lands with the engine)
    return SamplingParams


_ACCEPTED_CACHE: dict = {}


def _accepted_kwargs(cls) -> Optional[set]:
    """The keyword arguments `cls` takes, or None when it takes any (**kwargs)."""
    if cls not in _ACCEPTED_CACHE:
        try:
            sig = inspect.signature(cls)
            if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
                _ACCEPTED_CACHE[cls] = None
            else:
                _ACCEPTED_CACHE[cls] = set(sig.parameters)
        except (TypeError, ValueError):
            _ACCEPTED_CACHE[cls] = None
    return _ACCEPTED_CACHE[cls]


def make_logit_bias_processor(bias: dict[int, float]):
    """A vLLM v0 logits processor `(token_ids, logits) -> logits` adding the bias."""
    ids = list(bias.keys())
    vals = [bias[i] for i in ids]

    def processor(_token_ids, logits):
        import torch  # noqa: PLC0415
        idx = torch.tensor(ids, dtype=torch.long, device=logits.device)
        logits.index_add_(-1, idx, torch.tensor(vals, dtype=logits.dtype, device=logits.device))
        return logits

    return processor


def make_sampling_params(kwargs: dict[str, Any]) -> Any:
    """SamplingParams(**kwargs); InvalidField on a field the engine does not take or a bad
    value (SamplingParams' own message, which starts with the field's name)."""
    cls = sampling_params_cls()
    accepted = _accepted_kwargs(cls)
    if accepted is not None:
        if "logit_bias" in kwargs and "logit_bias" not in accepted \
                and "logits_processors" in accepted:
            kwargs = dict(kwargs)
            kwargs["logits_processors"] = [make_logit_bias_processor(kwargs.pop("logit_bias"))]
        for key in kwargs:
            if key not in accepted:
                raise InvalidField(f"{key} is not supported by this engine", key, UNSUPPORTED)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise InvalidField(str(e) or type(e).__name__, None, WRONG_TYPE) from None
    except (ValueError, OverflowError) as e:
        raise InvalidField(str(e) or type(e).__name__, None, BAD_VALUE) from None


def streaming_conflict(n: int, best_of: Optional[int], use_beam_search: bool) -> Optional[str]:
    """The field a streaming request may not set as given (None when it may stream): beam
    search and best_of > n pick among finished candidates, so nothing can be sent early."""
    if use_beam_search:
        return "use_beam_search"
    if best_of is not None and best_of > n:
        return "best_of"
    return None


def first_out_of_vocab(ids: list[int], vocab_size: int) -> Optional[int]:
    """The position of the first id outside 0..vocab_size-1 (None when all are in range or
    the vocabulary size is unknown, 0)."""
    if vocab_size <= 0:
        return None
    for i, t in enumerate(ids):
        if not 0 <= t < vocab_size:
            return i
    return None
