"""The generated protobuf/gRPC modules, `pb2` and `pb2_grpc`.

A built package has them in `llmcore/entrypoints/grpc/generated/` (installed by
proto/CMakeLists.txt). A dev tree or an editable install that did not re-run that
step has none, or stale ones: then they are generated here with grpcio-tools, from
the .proto shipped in the package (`llmcore/entrypoints/grpc/proto/`) or, in a source
checkout, from `proto/` at the repository root, into a cache directory
($LLMCORE_GRPC_STUBS_DIR, else $XDG_CACHE_HOME/llmcore/grpc-stubs, else
~/.cache/llmcore/grpc-stubs), and that directory is imported as
`llmcore.entrypoints.grpc.generated`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from . import _codegen

_PKG = __name__.rsplit(".", 1)[0]           # llmcore.entrypoints.grpc
_GEN_PKG = _PKG + ".generated"
_HERE = Path(__file__).resolve().parent


def proto_path() -> Path:
    """The llmcore.proto this package was built from (package data, else the source tree)."""
    for root in (_HERE / "proto", _HERE.parents[3] / "proto"):
        p = root / _codegen.PROTO_REL
        if p.is_file():
            return p
    raise FileNotFoundError(f"{_codegen.PROTO_REL} is neither in the package ({_HERE / 'proto'}) "
                            "nor in a source tree")


def _proto_root(p: Path) -> Path:
    return p.parents[2]  # <root>/llmcore/v1/llmcore.proto


def _forget_generated() -> None:
    for name in list(sys.modules):
        if name == _GEN_PKG or name.startswith(_GEN_PKG + "."):
            del sys.modules[name]


def _try_installed():
    """The stubs the build installed, if present, loadable and built from this .proto."""
    try:
        gen = importlib.import_module(_GEN_PKG)
        pb2 = importlib.import_module(_GEN_PKG + ".llmcore_pb2")
        pb2_grpc = importlib.import_module(_GEN_PKG + ".llmcore_pb2_grpc")
    except Exception as e:  # absent, or made by a protoc/grpc newer than the runtime
        _forget_generated()
        return None, e
    try:
        want = _codegen.proto_sha256(str(proto_path()))
    except FileNotFoundError:
        want = None
    if want is not None and getattr(gen, "PROTO_SHA256", want) != want:
        _forget_generated()
        return None, RuntimeError("installed stubs are stale")
    return (pb2, pb2_grpc), None


def _cache_root() -> Path:
    if os.environ.get("LLMCORE_GRPC_STUBS_DIR"):
        return Path(os.environ["LLMCORE_GRPC_STUBS_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llmcore" / "grpc-stubs"


def _generate_into_cache(why: Exception):
    try:
        import grpc_tools  # noqa: F401
    except ImportError:
        raise ImportError(
            f"llmcore's gRPC stubs are not installed ({why}) and grpcio-tools is missing, so they "
            "cannot be generated: `pip install grpcio-tools` or rebuild the package") from None
    import google.protobuf
    import grpc

    proto = proto_path()
    key = (f"{_codegen.proto_sha256(str(proto))[:16]}-pb{google.protobuf.__version__}"
           f"-grpc{grpc.__version__}")
    root = _cache_root()
    target = root / key / "generated"
    if not (target / "llmcore_pb2_grpc.py").is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".gen-"))
        _codegen.generate(str(_proto_root(proto)), str(tmp / "generated"))
        try:
            os.rename(tmp, root / key)          # atomic; another process may have won
        except OSError:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    spec = importlib.util.spec_from_file_location(
        _GEN_PKG, target / "__init__.py", submodule_search_locations=[str(target)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[_GEN_PKG] = module
    spec.loader.exec_module(module)
    pb2 = importlib.import_module(_GEN_PKG + ".llmcore_pb2")
    pb2_grpc = importlib.import_module(_GEN_PKG + ".llmcore_pb2_grpc")
    return pb2, pb2_grpc


def _load():
    mods, why = _try_installed()
    if mods is None:
        mods = _generate_into_cache(why)
    return mods


pb2, pb2_grpc = _load()

__all__ = ["pb2", "pb2_grpc", "proto_path"]
