"""One SmolLM2 LLM for the structured-output tests (greedy, small sizes)."""

import pytest


@pytest.fixture(scope="session")
def guided_llm():
    from llmcore import LLM
    llm = LLM(max_model_len=512, cpu_kv_cache_space=0.5, swap_space=0)
    return llm
