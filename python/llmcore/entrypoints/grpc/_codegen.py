"""Generate the Python gRPC stubs from llmcore.proto with grpcio-tools.

Used twice, with the same code:
- at build time by proto/CMakeLists.txt, as a script (it imports nothing from llmcore):
    python _codegen.py --proto-root proto --out <dir>
- at import time by _stubs.py, when the build did not install the stubs (a dev tree).

The output directory becomes a Python package holding `llmcore_pb2.py`,
`llmcore_pb2_grpc.py` (and the `.pyi`). protoc's Python generator writes absolute
imports that follow the .proto path (`from llmcore.v1 import llmcore_pb2`); those
would need a top-level `llmcore.v1` package, so they are rewritten to relative ones
(`from . import llmcore_pb2`). The descriptor keeps its canonical name
`llmcore/v1/llmcore.proto`.
"""

from __future__ import annotations

import argparse
import os
import hashlib
import re
import sys
import tempfile

PROTO_REL = "llmcore/v1/llmcore.proto"
GENERATED = ("llmcore_pb2.py", "llmcore_pb2_grpc.py", "llmcore_pb2.pyi")

# `from llmcore.v1 import llmcore_pb2 as llmcore_dot_v1_dot_llmcore__pb2`
_ABS_IMPORT = re.compile(r"^from llmcore\.v1 import (llmcore_pb2\b.*)$", re.MULTILINE)


def fix_imports(source: str) -> str:
    return _ABS_IMPORT.sub(r"from . import \1", source)


def generate(proto_root: str, out_dir: str) -> None:
    """Compile <proto_root>/llmcore/v1/llmcore.proto into the package directory out_dir."""
    from grpc_tools import protoc  # build/dev dependency only

    proto_root = os.path.abspath(proto_root)
    proto_file = os.path.join(proto_root, PROTO_REL)
    if not os.path.isfile(proto_file):
        raise FileNotFoundError(f"no {PROTO_REL} under {proto_root}")
    # grpc_tools ships the well-known types (google/protobuf/*.proto).
    wkt = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    with tempfile.TemporaryDirectory(prefix="llmcore-protoc-") as tmp:
        rc = protoc.main([
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{wkt}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            proto_file,
        ])
        if rc != 0:
            raise RuntimeError(f"grpc_tools.protoc failed on {proto_file} (exit {rc})")
        os.makedirs(out_dir, exist_ok=True)
        src_dir = os.path.join(tmp, "llmcore", "v1")
        for name in GENERATED:
            with open(os.path.join(src_dir, name), encoding="utf-8") as f:
                text = fix_imports(f.read())
            _write_atomic(os.path.join(out_dir, name), text)
        _write_atomic(os.path.join(out_dir, "__init__.py"),
                      '"""Generated from proto/llmcore/v1/llmcore.proto; do not edit."""\n'
                      f'PROTO_SHA256 = "{proto_sha256(proto_file)}"\n')


def proto_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _write_atomic(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proto-root", required=True, help="directory holding llmcore/v1/llmcore.proto")
    p.add_argument("--out", required=True, help="output package directory")
    a = p.parse_args(argv)
    if os.path.isdir(a.out):
        for name in GENERATED:
            if os.path.exists(os.path.join(a.out, name)):
                os.remove(os.path.join(a.out, name))
    generate(a.proto_root, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
