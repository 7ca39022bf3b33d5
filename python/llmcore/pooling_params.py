"""Parameters of a pooling (embedding) request, vLLM's `PoolingParams`.

An embedding request is a prompt that is prefilled and pooled (engine/core.py,
model_runner/pooler.py); nothing is sampled, so the only knobs are about the vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class PoolingParams:
    """dimensions: the embedding size asked for; llmcore has no matryoshka models, so it
    must be None or the model's hidden size (checked against the model by the front end).
    normalize: L2-normalise the vector; None = the model's pooler config
    (--override-pooler-config)."""

    dimensions: Optional[int] = None
    normalize: Optional[bool] = None

    def __post_init__(self) -> None:
        if self.dimensions is not None and (isinstance(self.dimensions, bool)
                                            or not isinstance(self.dimensions, int)
                                            or self.dimensions < 1):
            raise ValueError(f"dimensions must be a positive integer, got {self.dimensions!r}")
        if self.normalize is not None and not isinstance(self.normalize, bool):
            raise ValueError(f"normalize must be true, false or None, got {self.normalize!r}")

    def clone(self) -> "PoolingParams":
        return PoolingParams(self.dimensions, self.normalize)

    def verify(self, hidden_size: int) -> None:
        """ValueError unless this request fits a model of this hidden size."""
        if self.dimensions is not None and self.dimensions != hidden_size:
            raise ValueError(f"dimensions: the model's embeddings have {hidden_size} dimensions; "
                             f"{self.dimensions} was asked for and this model cannot change its "
                             "output size (not a matryoshka model)")
