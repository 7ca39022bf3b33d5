"""CI guard: the CUDA kernels and the llmcore._cuda module must configure and build (no GPU
needed). Builds sm_80 and sm_90a (LLMCORE_CUDA_ARCHS) into a temporary directory."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _pybind11_dir():
    try:
        import pybind11

        return pybind11.get_cmake_dir()
    except ImportError:
        return None


@pytest.mark.slow
def test_cuda_module_builds(tmp_path):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found on PATH")
    if shutil.which("cmake") is None or shutil.which("ninja") is None:
        pytest.skip("cmake and ninja are needed")
    archs = os.environ.get("LLMCORE_TEST_CUDA_ARCHS", "80;90a")
    build = tmp_path / "cuda-check"
    cfg = ["cmake", "-S", ROOT, "-B", str(build), "-G", "Ninja", "-DLLMCORE_CUDA=ON", "-DLLMCORE_PYTHON=ON",
           "-DLLMCORE_HIP=OFF", f"-DLLMCORE_CUDA_ARCHS={archs}", f"-DPython_EXECUTABLE={sys.executable}"]
    pb = _pybind11_dir()
    if pb:
        cfg.append(f"-Dpybind11_DIR={pb}")
    r = subprocess.run(cfg, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"configure failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    jobs = str(max(2, os.cpu_count() or 2))
    r = subprocess.run(["cmake", "--build", str(build), "--target", "_cuda", "-j", jobs], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, f"build failed:\n{r.stdout[-6000:]}\n{r.stderr[-4000:]}"
    mods = list(build.glob("cuda/_cuda*.so"))
    assert mods, "llmcore._cuda module not produced"
    # the module must not link libtorch
    if shutil.which("ldd"):
        out = subprocess.run(["ldd", str(mods[0])], capture_output=True, text=True).stdout
        assert "libtorch" not in out and "libc10" not in out
