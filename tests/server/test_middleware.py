"""--middleware: an ASGI class and an http middleware function given by import path both
run on every response; a bad path is refused at start-up, naming the flag."""

from __future__ import annotations

import httpx
import pytest

from fake_engine import FakeEngine

from llmcore.config import FrontendArgs
from llmcore.entrypoints.cli import StartupError, prepare


def test_middleware_class_and_function_run(fake_server):
    fa = FrontendArgs(middleware=["middleware_fixtures.TagHeaderMiddleware",
                                  "middleware_fixtures.tag_header"])
    with fake_server(FakeEngine(), fa) as srv:
        for path in ("/health", "/v1/models"):
            r = httpx.get(srv.url + path)
            assert r.status_code == 200
            assert r.headers.get("x-tag-class") == "1", path
            assert r.headers.get("x-tag-func") == "1", path


def test_without_middleware_no_tags(fake_server):
    with fake_server(FakeEngine()) as srv:
        r = httpx.get(srv.url + "/health")
        assert "x-tag-class" not in r.headers and "x-tag-func" not in r.headers


@pytest.mark.parametrize("path", ["middleware_fixtures.missing", "no_such_module_xyz.Thing",
                                  "nodots", "middleware_fixtures.NOT_MIDDLEWARE"])
def test_bad_middleware_path_refused_at_startup(path):
    with pytest.raises(StartupError, match="--middleware"):
        prepare(["--model", "x", "--middleware", path])
