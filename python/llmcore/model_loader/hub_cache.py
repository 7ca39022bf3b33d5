"""Hub ids (`org/name`) resolved from the local Hugging Face cache, offline.

huggingface_hub does the resolution (`snapshot_download(..., local_files_only=True)`):
it honours HF_HOME / HF_HUB_CACHE, a `cache_dir` (--download-dir), branch and tag names
through `refs/`, and commit hashes. Nothing is downloaded: llmcore never reaches a hub.
"""

from __future__ import annotations

import os
import re
from typing import Optional

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def looks_like_repo_id(value: str) -> bool:
    """True for `org/name` that is not an existing local path."""
    return bool(_REPO_ID.match(value)) and not os.path.exists(os.path.expanduser(value))


def fetch_hint(repo_id: str, revision: Optional[str], cache_dir: Optional[str]) -> str:
    cmd = f"huggingface-cli download {repo_id}"
    if revision:
        cmd += f" --revision {revision}"
    if cache_dir:
        cmd += f" --cache-dir {cache_dir}"
    return cmd


def resolve_cached_snapshot(repo_id: str, *, revision: Optional[str] = None,
                            cache_dir: Optional[str] = None, what: str = "model") -> str:
    """The local snapshot folder of `repo_id` at `revision` (default main). ValueError when
    the cache does not hold it, saying how to fetch it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    where = cache_dir or "the Hugging Face cache (HF_HUB_CACHE / HF_HOME)"
    rev = f" at revision {revision!r}" if revision else ""
    try:
        path = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                 local_files_only=True)
    except LocalEntryNotFoundError:
        raise ValueError(f"--{what} {repo_id!r}{rev} is not in {where}, and llmcore does not "
                         f"download models: fetch it first with "
                         f"`{fetch_hint(repo_id, revision, cache_dir)}`") from None
    except Exception as e:  # noqa: BLE001 - bad revision names, unreadable caches
        raise ValueError(f"--{what} {repo_id!r}{rev}: cannot resolve it in {where}: {e}") from None
    if not os.path.isdir(path):
        raise ValueError(f"--{what} {repo_id!r}{rev}: the cached snapshot {path} is missing; "
                         f"fetch it again with `{fetch_hint(repo_id, revision, cache_dir)}`")
    return path
