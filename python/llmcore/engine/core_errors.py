"""What the engine-core clients raise (core_client re-exports them)."""

from __future__ import annotations

from typing import Optional


class EngineDeadError(RuntimeError):
    """The engine core is gone; no request of this client can complete."""

    def __init__(self, exit_code: Optional[int], detail: str = "engine core process died"):
        self.exit_code = exit_code
        super().__init__(f"{detail} (exit code {exit_code})")


class EngineStartupError(RuntimeError):
    """The engine core could not be built (the factory's error) or its process died early."""


class UtilityCallError(RuntimeError):
    """A utility method raised in the core (or does not exist); the core keeps running."""
