"""Structured output (guided decoding): grammar backends behind one interface, the manager
the engine core uses, and the bitmask applied in the sampler."""

from llmcore.structured_output.backend import (GrammarCompileError, GrammarMatcher,
                                               StructuredOutputBackend, VocabInfo, backend_names,
                                               get_backend_class)
from llmcore.structured_output.spec import GrammarSpec, spec_from_params

__all__ = ["GrammarCompileError", "GrammarMatcher", "GrammarSpec", "StructuredOutputBackend",
           "VocabInfo", "backend_names", "get_backend_class", "spec_from_params"]
