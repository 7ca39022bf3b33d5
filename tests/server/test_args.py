"""Flags: every flag of the seed guide's table is accepted with its name and default;
--help groups flags and shows defaults; bad or unsupported flags exit at start-up with
one line naming the flag."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

from llmcore.config import EngineArgs, FrontendArgs
from llmcore.entrypoints.arg_parser import all_option_strings, make_arg_parser, parse_args

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# Where our default intentionally differs from the seed guide's (vLLM's) table.
DEFAULT_DEVIATIONS = {
    "--model": "SmolLM2-135M-Instruct",   # the issue: no --model serves the default SmolLM2
    "--max-log-len": None,               # the table writes "Unlimited"; None means unlimited
}


def seed_table_text() -> str:
    """The seed guide's table: ../shared/seed/*.txt when present, else the vendored copy."""
    texts = []
    for path in sorted(glob.glob(os.path.join(REPO, "..", "shared", "seed", "*.txt"))):
        with open(path, encoding="utf-8") as f:
            texts.append(f.read())
    if not any("--model" in t for t in texts):
        with open(os.path.join(HERE, "seed_flags_table.md"), encoding="utf-8") as f:
            texts = [f.read()]
    return "\n".join(texts)


def seed_rows() -> list[tuple[list[str], str]]:
    rows = []
    for line in seed_table_text().splitlines():
        line = line.strip()
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if not cells or not re.match(r"^--?[a-z]", cells[0]):
            continue
        names = [n.strip() for n in cells[0].split(",")]
        default = cells[-1] if len(cells) >= 3 else ""
        rows.append((names, default))
    return rows


def _dest(option: str) -> str:
    parser = make_arg_parser()
    for action in parser._actions:
        if option in action.option_strings:
            return action.dest
    raise KeyError(option)


def _sample_value(option: str) -> list[str]:
    """argv that sets `option` to a valid non-default-ish value."""
    parser = make_arg_parser()
    action = next(a for a in parser._actions if option in a.option_strings)
    if action.nargs == 0:
        return [option]
    if action.choices:
        return [option, str(list(action.choices)[0])]
    if action.type is int:
        return [option, "1"]
    if action.type is float:
        return [option, "0.5"]
    if getattr(action.type, "__name__", "") == "JSON list":
        return [option, '["*"]']
    return [option, "x"]


def _parse_seed_default(text: str):
    text = text.strip()
    if text == "":
        return None
    if text.startswith('"') and text.endswith('"'):
        return text[1:-1]
    if text in ("True", "False"):
        return text == "True"
    if text.startswith("["):
        return ["*"] if text == "['*']" else []
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def test_seed_table_parsed():
    rows = seed_rows()
    assert len(rows) >= 90, "the seed table was not found or not parsed"


@pytest.mark.parametrize("names,default", seed_rows(), ids=lambda v: v[0] if isinstance(v, list)
                         else None)
def test_seed_flag_accepted_with_default(names, default):
    options = all_option_strings()
    for name in names:
        assert name in options, f"{name} is not accepted by the parser"
        # It parses with a value (argparse errors would raise SystemExit).
        parse_args(_sample_value(name))
    dest = _dest(names[0])
    engine_args, frontend_args = parse_args([])
    ours = getattr(engine_args if hasattr(engine_args, dest) else frontend_args, dest)
    expected = DEFAULT_DEVIATIONS.get(names[0], _parse_seed_default(default))
    if names[0] in DEFAULT_DEVIATIONS or default.strip():
        assert ours == expected, f"{names[0]}: default {ours!r}, the seed says {default!r}"


def test_flags_come_from_the_dataclasses():
    """Single source of flag names: every parser option is a dataclass field (or alias)."""
    fields = {f"--{n.replace('_', '-')}" for n in EngineArgs.field_names()}
    fields |= {f"--{n.replace('_', '-')}" for n in
               (f.name for f in __import__("dataclasses").fields(FrontendArgs))}
    options = {o for o in all_option_strings() if o.startswith("--")} - {"--help"}
    aliases = {"--preemption_mode"}
    assert options - aliases == fields


def test_parse_values():
    ea, fa = parse_args(["-tp", "1", "--preemption_mode", "swap", "--allowed-origins",
                         '["http://a.example"]', "--served-model-name", "a", "b",
                         "--middleware", "x.y", "--middleware", "z.w", "--max-model-len", "64",
                         "--enforce-eager", "-q", "awq"])
    assert ea.preemption_mode == "swap" and ea.served_model_name == ["a", "b"]
    assert fa.allowed_origins == ["http://a.example"] and fa.middleware == ["x.y", "z.w"]
    assert ea.max_model_len == 64 and ea.enforce_eager and ea.quantization == "awq"


def test_help_groups_and_defaults():
    text = make_arg_parser().format_help()
    for group in ("Server:", "Model and weights:", "KV cache:", "Scheduler:", "Parallelism:",
                  "LoRA:"):
        assert group in text
    assert "(default: 8000)" in text and "(default: 16)" in text
    flat = " ".join(text.split())
    assert ("Send every tensor-parallel all-reduce through NCCL instead of the custom "
            "all-reduce" in flat)


def _run_cli(*args: str, env_extra=None) -> subprocess.CompletedProcess:
    import llmcore

    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(llmcore.__file__)))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "llmcore.entrypoints.openai.api_server", *args],
                          capture_output=True, text=True, timeout=240, env=env)


@pytest.mark.parametrize("argv,needle", [
    (["-tp", "2"], "--tensor-parallel-size"),
    (["-pp", "100"], "--pipeline-parallel-size 100 exceeds the model's 30 layers"),
    (["--max-parallel-loading-workers", "0"], "--max-parallel-loading-workers"),
    (["--lora-modules", "a=/x"], "--lora-modules"),
    (["--enable-lora"], "--enable-lora"),
    (["--speculative-model", "x"], "--speculative-model"),
    (["--quantization", "awq"], "--quantization"),
    (["--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization"),
    (["--port", "abc"], "--port"),
    (["--block-size", "7"], "--block-size"),
    (["--no-such-flag"], "--no-such-flag"),
    (["--grpc-only"], "--grpc-only"),
    (["--grpc-max-inflight", "0"], "--grpc-max-inflight"),
    (["--chat-template", "/no/such/template.jinja"], "--chat-template"),
    (["--allowed-origins", "*"], "--allowed-origins"),
])
def test_bad_flag_exits_with_one_line(argv, needle):
    r = _run_cli(*argv)
    assert r.returncode != 0
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert needle in err and "Traceback" not in err
    assert r.stdout.strip() == ""


def test_unreadable_model_exits_with_one_line(tmp_path):
    r = _run_cli("--model", str(tmp_path / "missing-model.gguf"), "--port", "0")
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert lines and "missing-model.gguf" in lines[-1] and "Traceback" not in r.stderr, r.stderr
    assert len([ln for ln in lines if "error" in ln.lower()]) == 1, r.stderr


def test_same_program_both_entry_points():
    from llmcore.entrypoints import cli
    from llmcore.entrypoints.openai import api_server

    r = _run_cli("--help")
    assert r.returncode == 0 and "--tensor-parallel-size" in r.stdout
    assert cli.main is not None and api_server.__name__.endswith("api_server")


def test_api_key_from_env(monkeypatch):
    from llmcore.entrypoints.cli import prepare

    monkeypatch.setenv("LLMCORE_API_KEY", "env-key")
    assert prepare([])[2] == "env-key"
    assert prepare(["--api-key", "flag-key"])[2] == "flag-key"
    monkeypatch.delenv("LLMCORE_API_KEY")
    assert prepare([])[2] is None


def test_help_lists_every_seed_flag():
    text = make_arg_parser().format_help()
    for names, _ in seed_rows():
        for name in names:
            assert re.search(re.escape(name) + r"\b", text), name
