
import pytest

# (tests/conftest.py puts the source tree on sys.path when llmcore is not installed:
# an unconditional insert here would make spawned processes import the uninstalled tree)

SKIP_REASON = "needs an NVIDIA GPU and llmcore._cuda"


@pytest.fixture
def ops():
    """llmcore.ops when the GPU kernels can run; skips otherwise."""
    import llmcore.ops as ops

    if not ops.cuda_available():
        pytest.skip(SKIP_REASON)
    return ops


def tol(dtype):
    import torch

    return {torch.float32: (2e-3, 2e-3), torch.float16: (6e-3, 6e-3), torch.bfloat16: (3e-2, 3e-2)}[dtype]
