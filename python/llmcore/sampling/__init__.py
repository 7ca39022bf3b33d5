"""Batched sampling: persistent per-slot state + vectorised sampler."""

from llmcore.sampling.sampler import Sampler, SamplerOutput, compute_prompt_logprobs
from llmcore.sampling.state import SamplingBatchState, check_params_against_vocab

__all__ = [
    "Sampler",
    "SamplerOutput",
    "SamplingBatchState",
    "check_params_against_vocab",
    "compute_prompt_logprobs",
]
