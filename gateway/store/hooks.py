"""What happens around every write, whatever its source (HL7 ingest, GP import,
FHIR API, rules themselves).

Two kinds of hook, registered by the feature packages that own them:

* **before-write checks** (``before_write("CarePlan")``): called by
  ``UnitOfWork.create/update`` with the resource about to be written and the
  stored version before it.  They may return an amended resource (e.g. add the
  registered GP practice to a CareTeam) or raise ``WriteRejected`` (422 on the
  FHIR API, an AE ACK on HL7).  Nothing is written when one refuses.

* **after-change hooks** (``after_changes(order=...)``): called once per unit of
  work just before commit, with the changes written so far.  Markers, safeguarding
  rules, referral-concern tracking and outbox events hang here, in ``order``.  A
  hook may write more resources (a rule raising a Flag); those changes are fed to
  every hook in a further round, so the Flag's own event is published too.  All of
  it commits in the same transaction as the write that caused it: nothing missed.

Feature modules register on import; ``_install`` imports the fixed list below on
first use, so every entry point (server, CLI, tests using a bare UnitOfWork) gets
the same hooks.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from gateway.store.unit_of_work import Change, Stored, UnitOfWork

# The modules that register hooks, imported once on first use.
HOOK_MODULES = (
    "gateway.gprecords.markers",  # complex-needs / CP plan / looked-after markers (order 10)
    "gateway.referrals.concerns",  # one Task per referral concern; completion guard (order 20)
    "gateway.careplans.validation",  # lead, GP participant, channels (before-write)
    "gateway.rules.engine",  # safeguarding rules R1-R6, care-plan rule (order 30)
    "gateway.notify.subscriptions",  # Subscription resources: validation (before-write)
    "gateway.notify.events",  # outbox events for subscription topics (order 90, last)
)

MAX_ROUNDS = 6  # a rule that writes, triggering a rule that writes ...; never unbounded


class WriteRejected(Exception):
    """A business rule refused a write.  ``expression`` names the element (FHIRPath)."""

    def __init__(self, message: str, *, expression: list[str] | None = None, status: int = 422,
                 code: str = "business-rule") -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression or []
        self.status = status
        self.code = code


BeforeWrite = Callable[["UnitOfWork", dict[str, Any], "Stored | None"], "dict[str, Any] | None"]
AfterChanges = Callable[["UnitOfWork", list["Change"]], None]


@dataclass
class _Registry:
    before: dict[str, list[BeforeWrite]] = field(default_factory=dict)
    after: list[tuple[int, str, AfterChanges]] = field(default_factory=list)
    installed: bool = False
    disabled: set[str] = field(default_factory=set)


_registry = _Registry()


def before_write(*resource_types: str) -> Callable[[BeforeWrite], BeforeWrite]:
    """Register ``fn(uow, resource, before) -> resource | None`` for these types."""
    def register(fn: BeforeWrite) -> BeforeWrite:
        for rtype in resource_types:
            hooks = _registry.before.setdefault(rtype, [])
            if fn not in hooks:
                hooks.append(fn)
        return fn
    return register


def after_changes(order: int, name: str) -> Callable[[AfterChanges], AfterChanges]:
    """Register ``fn(uow, changes)``; lower ``order`` runs first.  ``name`` lets a
    deployment or benchmark switch a hook off (``disable``)."""
    def register(fn: AfterChanges) -> AfterChanges:
        if not any(n == name for _o, n, _f in _registry.after):
            _registry.after.append((order, name, fn))
            _registry.after.sort(key=lambda item: item[0])
        return fn
    return register


def disable(*names: str) -> None:
    """Switch after-change hooks off by name (e.g. ``rules`` for a benchmark baseline)."""
    _registry.disabled.update(names)


def enable(*names: str) -> None:
    _registry.disabled.difference_update(names)


def _install() -> None:
    if not _registry.installed:
        for module in HOOK_MODULES:
            importlib.import_module(module)
        _registry.installed = True


def check_before_write(uow: "UnitOfWork", res_type: str, resource: dict[str, Any],
                       before: "Stored | None") -> dict[str, Any]:
    """Run the before-write checks for one resource; returns what to write."""
    _install()
    for fn in _registry.before.get(res_type, ()):
        amended = fn(uow, resource, before)
        if amended is not None:
            resource = amended
    return resource


def has_before_write(res_type: str) -> bool:
    _install()
    return res_type in _registry.before


def run_after_changes(uow: "UnitOfWork") -> None:
    """Feed the unit of work's changes to every after-change hook, in rounds, until
    no hook writes anything more; then forget them (they are handled)."""
    _install()
    start = 0
    for _round in range(MAX_ROUNDS):
        end = len(uow.changes)
        if start >= end:
            break
        batch = uow.changes[start:end]
        for _order, name, fn in _registry.after:
            if name not in _registry.disabled:
                fn(uow, batch)
        start = end
    else:
        raise RuntimeError("after-change hooks kept writing for %d rounds; a rule loops" % MAX_ROUNDS)
    uow.changes.clear()
