"""What the served model does with a prompt: generate tokens, or pool its hidden states
into one vector (embeddings). vLLM's `--task`, `--runner` and `--override-pooler-config`
resolve into a `PoolerConfig` (None: the model generates).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional, Union

TASKS = ["auto", "generate", "embed"]
RUNNERS = ["auto", "generate", "pooling"]
# LAST: the prompt's last position (decoder models: the only one that saw every token);
# MEAN: the average over every prompt position; CLS: the first position.
POOLING_TYPES = ("LAST", "MEAN", "CLS")
_OVERRIDE_KEYS = ("pooling_type", "normalize")


@dataclass(frozen=True)
class PoolerConfig:
    """How an embedding is made from the final hidden states (after the final norm)."""

    pooling_type: str = "LAST"
    normalize: bool = True          # L2-normalise the pooled vector

    @property
    def needs_every_position(self) -> bool:
        """MEAN and CLS read positions a prefix-cache hit would skip; LAST is always
        computed (the scheduler computes at least a prompt's last token)."""
        return self.pooling_type != "LAST"


def resolve_runner(task: str, runner: str) -> str:
    """'generate' or 'pooling' from --task / --runner (vLLM's names; `auto` means generate
    for llmcore's decoder models)."""
    from_task = {"auto": None, "generate": "generate", "embed": "pooling"}[task]
    from_runner = {"auto": None, "generate": "generate", "pooling": "pooling"}[runner]
    if from_task and from_runner and from_task != from_runner:
        raise ValueError(f"--task {task} and --runner {runner} disagree: --task embed goes with "
                         "--runner pooling, --task generate with --runner generate")
    return from_task or from_runner or "generate"


def parse_override_pooler_config(value: Union[str, dict, None]) -> dict:
    """--override-pooler-config as a dict of known keys (ValueError naming the flag)."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"--override-pooler-config is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError("--override-pooler-config must be a JSON object, e.g. "
                         '{"pooling_type": "MEAN", "normalize": true}')
    unknown = sorted(set(value) - set(_OVERRIDE_KEYS))
    if unknown:
        raise ValueError(f"--override-pooler-config: unsupported keys {unknown}; supported: "
                         f"{list(_OVERRIDE_KEYS)}")
    out: dict[str, Any] = {}
    if "pooling_type" in value:
        pt = value["pooling_type"]
        if not isinstance(pt, str) or pt.upper() not in POOLING_TYPES:
            raise ValueError(f"--override-pooler-config: pooling_type {pt!r} is not one of "
                             f"{list(POOLING_TYPES)}")
        out["pooling_type"] = pt.upper()
    if "normalize" in value:
        if not isinstance(value["normalize"], bool):
            raise ValueError("--override-pooler-config: normalize must be true or false")
        out["normalize"] = value["normalize"]
    return out


def make_pooler_config(task: str, runner: str,
                       override: Union[str, dict, None]) -> Optional[PoolerConfig]:
    """The PoolerConfig of a pooling model (defaults for decoder models: LAST + normalize,
    as vLLM's), None for a generating one."""
    fields = parse_override_pooler_config(override)
    if resolve_runner(task, runner) == "generate":
        if fields:
            raise ValueError("--override-pooler-config needs an embedding model: add --task embed "
                             "(or --runner pooling)")
        return None
    return PoolerConfig(**fields)



def check_task(task: str, pooling: bool) -> None:
    """ValueError when a request asks for what the served model (task "generate" or
    "embed") does not do: generation on an embedding model, embeddings on a generating one."""
    if task == "embed" and not pooling:
        raise ValueError("this model serves embeddings (--task embed): it does not generate "
                         "text; ask for embeddings instead (LLM.embed, /v1/embeddings)")
    if task != "embed" and pooling:
        raise ValueError("this model generates text: it does not serve embeddings; start it "
                         "with --task embed (LLM(task='embed')) for those")
