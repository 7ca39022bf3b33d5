"""vLLM's `LLM.beam_search` API: its parameters and outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from llmcore.sampling_params import SamplingParams


@dataclass
class BeamSearchParams:
    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False

    def to_sampling_params(self) -> SamplingParams:
        """The equivalent `use_beam_search` SamplingParams (one driver serves both APIs)."""
        if self.temperature != 0.0:
            raise ValueError("temperature: beam search here ranks by the model's log "
                             "probabilities (temperature 0) only")
        if self.beam_width < 2:
            raise ValueError(f"beam_width: must be at least 2, got {self.beam_width}")
        return SamplingParams(n=self.beam_width, best_of=self.beam_width,
                              use_beam_search=True, temperature=0.0,
                              max_tokens=self.max_tokens, ignore_eos=self.ignore_eos,
                              length_penalty=self.length_penalty,
                              include_stop_str_in_output=self.include_stop_str_in_output)


@dataclass
class BeamSearchSequence:
    """One hypothesis: `tokens` are the prompt's followed by the generated ones."""
    tokens: list
    cum_logprob: float
    text: Optional[str] = None
    finish_reason: Optional[str] = None
    stop_reason: Union[int, str, None] = None
    logprobs: list = field(default_factory=list)


@dataclass
class BeamSearchOutput:
    """The best hypotheses of one prompt, best first."""
    sequences: list
