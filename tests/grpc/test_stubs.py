"""The generated Python stubs: relative imports, canonical descriptor name, not stale."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from grpc_testlib import PROTO, ROOT


def test_codegen_makes_a_relocatable_package(tmp_path):
    out = tmp_path / "anypkg"
    subprocess.run([sys.executable, str(ROOT / "python/llmcore/entrypoints/grpc/_codegen.py"),
                    "--proto-root", str(ROOT / "proto"), "--out", str(out)], check=True)
    grpc_src = (out / "llmcore_pb2_grpc.py").read_text()
    assert "from . import llmcore_pb2" in grpc_src
    assert "from llmcore.v1" not in grpc_src and "import llmcore_pb2 as" not in grpc_src.replace(
        "from . import llmcore_pb2 as", "")
    code = ("import anypkg.llmcore_pb2_grpc as g, anypkg.llmcore_pb2 as p; "
            "assert p.DESCRIPTOR.name == 'llmcore/v1/llmcore.proto', p.DESCRIPTOR.name; "
            "assert p.DESCRIPTOR.package == 'llmcore.v1'; assert g.GenerationStub; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_stubs_are_built_from_this_proto():
    from llmcore.entrypoints.grpc._stubs import pb2, pb2_grpc, proto_path

    gen = sys.modules["llmcore.entrypoints.grpc.generated"]  # installed, or made by the fallback

    assert gen.PROTO_SHA256 == hashlib.sha256(PROTO.read_bytes()).hexdigest()
    assert proto_path().read_bytes() == PROTO.read_bytes()
    assert set(pb2.DESCRIPTOR.services_by_name["Generation"].methods_by_name.keys()) >= {
        "Generate", "GenerateUnary", "Chat", "Tokenize", "Detokenize", "ListModels", "Health",
        "GetServerInfo"}
    assert pb2_grpc.GenerationServicer


def test_sampling_params_message_covers_sampling_params():
    """Every SamplingParams field that a wire message can carry is in the proto."""
    import dataclasses

    from llmcore.entrypoints.grpc._stubs import pb2
    from llmcore.sampling_params import SamplingParams

    wire = set(pb2.SamplingParams.DESCRIPTOR.fields_by_name)
    fields = {f.name for f in dataclasses.fields(SamplingParams) if not f.name.startswith("_")}
    not_on_wire = {"logits_processors", "output_kind"}  # Python callables / internal
    assert fields - not_on_wire - wire == set()


def test_import_time_fallback_generates_into_cache(tmp_path):
    """A source tree without build output: _stubs.py compiles the .proto into the cache dir."""
    import os
    import site

    import pytest

    src = ROOT / "python"
    if (src / "llmcore/entrypoints/grpc/generated/llmcore_pb2_grpc.py").exists():
        pytest.skip("this source tree has build-generated stubs")
    # -S: no .pth files, so neither an installed nor an editable llmcore shadows the tree.
    paths = [str(src)] + site.getsitepackages()
    code = (f"import sys; sys.path[:0] = {paths!r}; "
            "from llmcore.entrypoints.grpc._stubs import pb2, pb2_grpc; "
            "import llmcore; assert llmcore.__file__.startswith(sys.path[0]), llmcore.__file__; "
            "assert pb2_grpc.GenerationStub; print(pb2.__file__)")
    env = dict(os.environ, LLMCORE_GRPC_STUBS_DIR=str(tmp_path / "cache"))
    for _ in range(2):  # generated once, then reused
        r = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().startswith(str(tmp_path / "cache")), r.stdout
    assert len(list((tmp_path / "cache").iterdir())) == 1
