"""Tool-call parsers by name (`--tool-call-parser`), and loading `--tool-parser-plugin` files.

A parser is one module with a ToolParser subclass decorated `@register_tool_parser("name")`;
a plugin file does the same from outside the package.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Callable, Optional

from llmcore.entrypoints.openai.tool_parsers.base import ToolParser

_PARSERS: dict[str, type[ToolParser]] = {}


def register_tool_parser(name: str) -> Callable[[type[ToolParser]], type[ToolParser]]:
    def register(cls: type[ToolParser]) -> type[ToolParser]:
        if not (isinstance(cls, type) and issubclass(cls, ToolParser)):
            raise TypeError(f"tool parser {name!r} must be a ToolParser subclass")
        _PARSERS[name] = cls
        return cls
    return register


def tool_parser_names() -> list[str]:
    return sorted(_PARSERS)


def get_tool_parser(name: str) -> type[ToolParser]:
    try:
        return _PARSERS[name]
    except KeyError:
        raise ValueError(f"--tool-call-parser: unknown parser {name!r}; known parsers: "
                         f"{', '.join(tool_parser_names())}") from None


def load_tool_parser_plugin(path: str) -> None:
    """Run a Python file that registers parsers (`--tool-parser-plugin`)."""
    if not os.path.isfile(path):
        raise ValueError(f"--tool-parser-plugin: cannot read {path!r}")
    module_name = "llmcore_tool_parser_plugin_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"--tool-parser-plugin: {path!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any failure of the plugin is a start-up error
        sys.modules.pop(module_name, None)
        raise ValueError(f"--tool-parser-plugin {path!r} failed to load: "
                         f"{type(e).__name__}: {e}") from None


def resolve_tool_parser(enable_auto_tool_choice: bool, tool_call_parser: Optional[str],
                        tool_parser_plugin: Optional[str]) -> Optional[type[ToolParser]]:
    """The parser class the server flags name (None without --tool-call-parser).
    ValueError naming the flag when they do not fit together."""
    if tool_parser_plugin:
        load_tool_parser_plugin(tool_parser_plugin)
    if enable_auto_tool_choice and not tool_call_parser:
        raise ValueError("--enable-auto-tool-choice needs --tool-call-parser (one of "
                         f"{', '.join(tool_parser_names())})")
    if not tool_call_parser:
        return None
    return get_tool_parser(tool_call_parser)
