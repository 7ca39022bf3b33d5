"""The server's argument parser, built from the `EngineArgs` and `FrontendArgs` dataclasses.

There is no second list of flag names: every `--flag-name` comes from a dataclass field
(`field_name` with `_` -> `-`), and its type, default, choices, aliases, nargs and help
group come from the field's type and metadata (see llmcore.config.arg).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from typing import Any, Optional, Sequence, Union

from llmcore.config import EngineArgs, FrontendArgs, flag_name

_PROG = "llmcore-server"


class ArgumentError(ValueError):
    """A flag value is invalid or names a feature that is not built yet."""


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _json_list(flag: str):
    def parse(value: str) -> list:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            raise argparse.ArgumentTypeError(f"{flag} expects a JSON list, e.g. '[\"*\"]', got {value!r}")
        if not isinstance(parsed, list):
            raise argparse.ArgumentTypeError(f"{flag} expects a JSON list, got {value!r}")
        return [str(v) for v in parsed]
    parse.__name__ = "JSON list"
    return parse


def _bool_value(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line (no usage dump) and exits 2."""

    def error(self, message: str) -> typing.NoReturn:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _default_text(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, list):
        return json.dumps(value)
    return repr(value) if isinstance(value, str) else str(value)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _add_fields(parser: argparse.ArgumentParser, cls: type, groups: dict) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        group_name = meta.get("group") or "Other"
        if group_name not in groups:
            groups[group_name] = parser.add_argument_group(group_name)
        group = groups[group_name]
        flag = "--" + (meta.get("flag") or flag_name(f.name))
        names = [flag, *meta.get("aliases", ())]
        default = _field_default(f)
        tp = _unwrap_optional(hints[f.name])
        help_text = meta.get("help", "")
        if meta.get("unsupported"):
            help_text += " [not supported yet]"
        help_text += f" (default: {_default_text(default)})"
        help_text = help_text.replace("%", "%%")
        kwargs: dict[str, Any] = dict(dest=f.name, help=help_text)
        nargs = meta.get("nargs")
        if tp is bool:
            kwargs.update(action="store_true", default=default)
        elif nargs == "append":
            kwargs.update(action="append", default=None, type=str)
        elif typing.get_origin(tp) is list:
            inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
            if nargs:
                kwargs.update(nargs=nargs, type=inner, default=default)
            else:
                kwargs.update(type=_json_list(flag), default=default)
        else:
            kwargs.update(type=tp if tp in (int, float, str) else str, default=default)
            if nargs:
                kwargs["nargs"] = nargs
            if meta.get("choices") is not None:
                kwargs["choices"] = meta["choices"]
        group.add_argument(*names, **kwargs)


def make_arg_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=_PROG,
        usage="%(prog)s [--model PATH] [options]",
        description="llmcore OpenAI-compatible server (same flags as "
                    "`python -m vllm.entrypoints.openai.api_server`).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    groups: dict = {}
    _add_fields(parser, FrontendArgs, groups)
    _add_fields(parser, EngineArgs, groups)
    return parser


def _check_unsupported(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        reason = f.metadata.get("unsupported")
        if reason and getattr(obj, f.name) != _field_default(f):
            raise ArgumentError(f"--{flag_name(f.name)} is not supported: {reason}")


def validate_frontend_args(args: FrontendArgs) -> None:
    _check_unsupported(args)
    for f in dataclasses.fields(args):
        choices = f.metadata.get("choices")
        value = getattr(args, f.name)
        if choices is not None and value is not None and value not in choices:
            raise ArgumentError(f"--{flag_name(f.name)}: {value!r} is not one of {choices}")
    if not 0 <= args.port <= 65535:
        raise ArgumentError("--port must be in 0..65535")
    if args.grpc_port is not None and not 0 <= args.grpc_port <= 65535:
        raise ArgumentError("--grpc-port must be in 0..65535")
    if args.grpc_only and args.grpc_port is None:
        raise ArgumentError("--grpc-only needs --grpc-port")
    if args.grpc_max_message_size < 1:
        raise ArgumentError("--grpc-max-message-size must be >= 1")
    if args.grpc_max_inflight is not None and args.grpc_max_inflight < 1:
        raise ArgumentError("--grpc-max-inflight must be >= 1")
    if not args.shutdown_timeout >= 0:
        raise ArgumentError("--shutdown-timeout must be >= 0 seconds")
    if (args.ssl_keyfile is None) != (args.ssl_certfile is None):
        raise ArgumentError("--ssl-keyfile and --ssl-certfile must be given together")
    if args.root_path is not None and args.root_path and not args.root_path.startswith("/"):
        raise ArgumentError("--root-path must start with '/'")


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[EngineArgs, FrontendArgs]:
    """Parse argv into (EngineArgs, FrontendArgs). argparse errors exit 2 (one line).

    Semantic checks (validate) are separate: see `validate_args`.
    """
    ns = make_arg_parser().parse_args(argv)
    values = vars(ns)
    engine_names = {f.name for f in dataclasses.fields(EngineArgs)}
    frontend_names = {f.name for f in dataclasses.fields(FrontendArgs)}
    engine_args = EngineArgs(**{k: v for k, v in values.items() if k in engine_names})
    fe_values = {k: v for k, v in values.items() if k in frontend_names}
    if fe_values.get("middleware") is None:
        fe_values["middleware"] = []
    frontend_args = FrontendArgs(**fe_values)
    return engine_args, frontend_args


def validate_args(engine_args: EngineArgs, frontend_args: FrontendArgs) -> None:
    """Raise ArgumentError/ValueError naming the first bad or unsupported flag."""
    validate_frontend_args(frontend_args)
    engine_args.validate()


def all_option_strings() -> set[str]:
    """Every option string the parser accepts (flags and aliases)."""
    out: set[str] = set()
    for action in make_arg_parser()._actions:
        out.update(action.option_strings)
    return out


if __name__ == "__main__":  # pragma: no cover
    make_arg_parser().print_help(sys.stdout)
