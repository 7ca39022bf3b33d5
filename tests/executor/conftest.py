"""Fixtures of the executor tests: the tiny random Llama (tests/tiny_llama.py), and one
OpenMP thread per process (inherited by spawned workers, which share the cores)."""

from __future__ import annotations

import pytest

from tiny_llama import save_tiny_llama


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    return save_tiny_llama(str(tmp_path_factory.mktemp("tiny_llama_tp")))


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
