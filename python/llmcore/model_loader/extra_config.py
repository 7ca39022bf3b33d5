"""--model-loader-extra-config: a JSON object of settings the weight loaders read.

Only the keys below exist; any other key is refused with the list of known ones, so a
misspelt setting never passes silently."""

from __future__ import annotations

import json
from typing import Any, Optional, Union

# key -> (type, what it does)
LOADER_EXTRA_KEYS: dict[str, tuple[type, str]] = {
    "npcache_dir": (str, "folder of the --load-format npcache numpy cache "
                         "(default: <model folder>/npcache)"),
    "tensorizer_uri": (str, "the serialized model file read by --load-format tensorizer"),
}

_FLAG = "--model-loader-extra-config"


def parse_loader_extra_config(value: Union[None, str, dict]) -> dict[str, Any]:
    """The flag's JSON (or an already parsed dict) -> a checked dict. ValueError names the
    flag and, for an unknown key, the known ones."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        parsed: Any = dict(value)
    else:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{_FLAG} is not valid JSON: {e}") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{_FLAG} must be a JSON object, got {type(parsed).__name__}")
    for key, v in parsed.items():
        if key not in LOADER_EXTRA_KEYS:
            raise ValueError(f"{_FLAG}: unknown key {key!r}; known keys: "
                             f"{', '.join(sorted(LOADER_EXTRA_KEYS))}")
        want = LOADER_EXTRA_KEYS[key][0]
        if not isinstance(v, want):
            raise ValueError(f"{_FLAG}: {key} must be a {want.__name__}, got {v!r}")
    return parsed


def loader_extra(config: Optional[dict], key: str, default: Any = None) -> Any:
    if key not in LOADER_EXTRA_KEYS:  # a typo in llmcore itself
        raise KeyError(key)
    return (config or {}).get(key, default)
