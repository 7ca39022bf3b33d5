"""--disable-custom-all-reduce from the command line to the worker's build_parallel_groups."""

from __future__ import annotations

import pytest
import torch


def test_disable_flag_reaches_the_parallel_groups(tiny_llama, monkeypatch):
    from llmcore.config import EngineArgs
    from llmcore.entrypoints.arg_parser import parse_args
    from llmcore.worker.worker import Worker

    ea, _ = parse_args(["--model", tiny_llama, "--device", "cpu", "-tp", "2",
                        "--disable-custom-all-reduce"])
    assert ea.disable_custom_all_reduce is True
    config = ea.create_engine_config()
    assert config.parallel_config.disable_custom_all_reduce is True
    default = EngineArgs(model=tiny_llama, device="cpu", tensor_parallel_size=2)
    assert default.create_engine_config().parallel_config.disable_custom_all_reduce is False

    seen = {}

    def fake_build(tp_size, pp_size, device=None, disable_custom_all_reduce=False):
        seen.update(tp=tp_size, pp=pp_size, device=device,
                    disabled=disable_custom_all_reduce)
        raise RuntimeError("stop here")

    import llmcore.distributed.groups as groups
    monkeypatch.setattr(groups, "build_parallel_groups", fake_build)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match="stop here"):
        Worker(config, rank=0).init_device()
    assert seen == dict(tp=2, pp=1, device=config.device, disabled=True)
