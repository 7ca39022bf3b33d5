"""--guided-decoding-overlap: parsed, off by default, and carried into the structured-output
config the GPU runner reads (model_runner/grammar_mask.py)."""

from __future__ import annotations

import pytest

from llmcore.entrypoints.arg_parser import parse_args


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from tiny_llama import save_tiny_llama
    return save_tiny_llama(str(tmp_path_factory.mktemp("tiny")))


@pytest.mark.parametrize("argv, expected", [([], False), (["--guided-decoding-overlap"], True)])
def test_flag_reaches_the_structured_output_config(tiny_folder, argv, expected):
    engine_args, _ = parse_args(["--model", tiny_folder, "--device", "cpu",
                                 "--skip-tokenizer-init", "--max-model-len", "128"] + argv)
    so = engine_args.create_engine_config().structured_output_config
    assert so.overlap_mask_wait is expected
