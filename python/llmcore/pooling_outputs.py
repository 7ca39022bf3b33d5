"""Outputs of pooling (embedding) requests, vLLM's names and fields:
`PoolingRequestOutput(.outputs.data)` from `LLM.encode`, `EmbeddingRequestOutput
(.outputs.embedding)` from `LLM.embed`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch


@dataclass
class PoolingOutput:
    data: torch.Tensor                 # the pooled vector, float32, shape [hidden_size]


@dataclass
class PoolingRequestOutput:
    request_id: str
    outputs: PoolingOutput
    prompt_token_ids: List[int]
    finished: bool
    prompt: Optional[str] = None


@dataclass
class EmbeddingOutput:
    embedding: List[float]

    @classmethod
    def from_base(cls, output: PoolingOutput) -> "EmbeddingOutput":
        return cls(output.data.tolist())

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)


@dataclass
class EmbeddingRequestOutput:
    request_id: str
    outputs: EmbeddingOutput
    prompt_token_ids: List[int]
    finished: bool
    prompt: Optional[str] = None

    @classmethod
    def from_base(cls, out: PoolingRequestOutput) -> "EmbeddingRequestOutput":
        return cls(out.request_id, EmbeddingOutput.from_base(out.outputs), out.prompt_token_ids,
                   out.finished, out.prompt)
