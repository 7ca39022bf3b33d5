"""Tool-call parsers of model output (`--tool-call-parser`): one module per format."""

from llmcore.entrypoints.openai.tool_parsers.base import (  # noqa: F401
    DeltaMessage, DeltaToolCall, ExtractedToolCalls, Scan, ToolCall, ToolParser)
from llmcore.entrypoints.openai.tool_parsers.json_scan import PartialCall  # noqa: F401
from llmcore.entrypoints.openai.tool_parsers.registry import (  # noqa: F401
    get_tool_parser, load_tool_parser_plugin, register_tool_parser, resolve_tool_parser,
    tool_parser_names)

# The built-in parsers register themselves on import.
from llmcore.entrypoints.openai.tool_parsers import (  # noqa: F401,E402
    hermes, llama3_json, mistral, pythonic)
