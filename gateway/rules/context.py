"""What one evaluation of one child carries: the store, the record, the rules, the clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from gateway.rules.config import RulesConfig
from gateway.rules.facts import ChildRecord
from gateway.store.unit_of_work import UnitOfWork, fhir_instant


@dataclass
class Evaluation:
    uow: UnitOfWork
    record: ChildRecord
    cfg: RulesConfig
    now: datetime  # the rules' clock: the write's time, or the scheduler's --as-of
    scheduled: bool = False  # time-based pass (R7 drift runs only here)
    actions: list[tuple[str, str, str]] = field(default_factory=list)  # (rule, action, reference)

    @property
    def stamp(self) -> str:
        return fhir_instant(self.now)

    def note(self, rule: str, action: str, ref: str) -> None:
        if action not in ("unchanged", "none", "closed"):
            self.actions.append((rule, action, ref))
