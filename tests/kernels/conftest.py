import os
import sys

import pytest

# Make `import llmcore` work from a source checkout (python/ layout) without installation.
_PY = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "python"))
if _PY not in sys.path:
    sys.path.insert(0, _PY)

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
