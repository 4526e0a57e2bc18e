"""Placeholder: the subscription delivery worker (filled in by the subscriptions feature)."""

from __future__ import annotations

from typing import Any


class DeliveryWorker:
    def __init__(self, engine: Any, settings: Any) -> None:
        self.engine = engine
        self.settings = settings

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
