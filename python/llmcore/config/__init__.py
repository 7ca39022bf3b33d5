"""Configuration.

- `args.py`: `EngineArgs` and `FrontendArgs`, the one list of flag names (the CLI and
  `LLM(**kwargs)` are built from them).
- `engine_config.py`: the typed sub-configs `EngineArgs.create_engine_config()` resolves
  the flags into, validated before any weight is read.
"""

from llmcore.config.args import (  # noqa: F401
    DEFAULT_MODEL, GROUP_CACHE, GROUP_LOG, GROUP_LORA, GROUP_MODEL, GROUP_PARALLEL, GROUP_SCHED,
    GROUP_SERVER, GROUP_SPEC, GROUP_VISION, EngineArgs, FrontendArgs, arg, flag_name)
