"""The time-based rules (R7 drift; Flags aging out) on a clock: a thread inside
``gateway serve`` and ``gateway rules run [--as-of]`` by hand.

A run is one transaction: lock the scheduler-state row (PostgreSQL: ``FOR UPDATE
SKIP LOCKED`` — a second replica finds it locked and skips this tick; SQLite: the
write transaction is already exclusive), re-evaluate every child with an open
rules Flag at the run's clock, run the after-change hooks (so escalations become
outbox events in the same commit), record the run, commit.  The escalation level
is stored on each Flag and only ever raised to the level the clock makes due, so a
restart, a re-run or a replica cannot fire the same escalation twice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import datetime, timezone
from typing import Any

import orjson
from sqlalchemy.engine import Engine

from gateway.rules import config
from gateway.rules.engine import evaluate_child, flagged_children
from gateway.store.hooks import run_after_changes
from gateway.store.unit_of_work import UnitOfWork, fhir_instant, unit_of_work

log = logging.getLogger("gateway.rules.scheduler")

JOB = "safeguarding-rules"


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _claim(uow: UnitOfWork) -> bool:
    """Hold the job's state row for this transaction; False if another run holds it."""
    if uow.dialect == "postgresql":
        uow.execute("INSERT INTO rules_scheduler_state (name) VALUES (?) ON CONFLICT (name) DO NOTHING", (JOB,))
        row = uow.fetchone("SELECT name FROM rules_scheduler_state WHERE name = ? FOR UPDATE SKIP LOCKED", (JOB,))
        return row is not None
    uow.execute("INSERT OR IGNORE INTO rules_scheduler_state (name) VALUES (?)", (JOB,))
    return True


def run_once(engine: Engine, *, as_of: datetime | None = None, rules_file: Any = None) -> dict[str, Any]:
    """One pass of the time-based rules at ``as_of`` (default: now).  Returns a summary."""
    cfg = config.current(rules_file) if rules_file else config.current()
    with unit_of_work(engine) as uow:
        if not _claim(uow):
            return {"skipped": "another replica is running the rules now"}
        clock = (as_of or uow.now).astimezone(timezone.utc)
        actions: list[dict[str, str]] = []
        children = flagged_children(uow)
        for pid in children:
            ev = evaluate_child(uow, pid, cfg, clock, scheduled=True)
            if ev is not None:
                actions += [{"patient": f"Patient/{pid}", "rule": r, "action": a, "reference": ref}
                            for r, a, ref in ev.actions]
        run_after_changes(uow)
        summary = {"as_of": fhir_instant(clock), "rules_version": cfg.version, "children": len(children),
                   "actions": actions}
        uow.execute("UPDATE rules_scheduler_state SET last_run_at = ?, last_as_of = ?, runs = runs + 1, "
                    "last_owner = ?, last_summary = ? WHERE name = ?",
                    (fhir_instant(uow.now), summary["as_of"], _owner(), orjson.dumps(summary).decode()[:100_000],
                     JOB))
    return summary


class RulesScheduler:
    """Runs ``run_once`` every ``settings.rules_interval_seconds`` on its own thread."""

    def __init__(self, engine: Engine, settings: Any) -> None:
        self.engine = engine
        self.settings = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0
        self.last_error = ""

    def start(self) -> None:
        if not getattr(self.settings, "rules_enabled", True) or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="rules-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def _loop(self) -> None:
        interval = max(0.05, float(self.settings.rules_interval_seconds))
        # First pass soon after start (a restart catches up on what fell due while down).
        wait = min(interval, 10.0)
        while not self._stop.wait(wait):
            wait = interval
            try:
                run_once(self.engine, rules_file=self.settings.rules_file)
                self.runs += 1
            except Exception as exc:  # keep the clock running; the next tick retries
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("rules scheduler run failed")
