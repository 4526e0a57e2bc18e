"""Placeholder: the time-based rules scheduler (filled in by the rules feature)."""

from __future__ import annotations

from typing import Any


class RulesScheduler:
    def __init__(self, engine: Any, settings: Any) -> None:
        self.engine = engine
        self.settings = settings

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
