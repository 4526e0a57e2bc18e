"""A write-through cache for the single ingest writer (SQLite).

Nearly every message names the same clinicians, clinics and services, and most
name a child already known.  Looking each of them up (identifier -> id -> JSON)
was a third of the SQL per message.  The writer is the only process writing
through its connection, so it can remember what it read and wrote — as long as
nobody else writes.  SQLite tells us exactly that: ``PRAGMA data_version`` on a
connection changes when *another* connection commits.  The writer checks it at the
start of every batch and forgets everything if it moved; it also forgets
everything when a savepoint or a batch rolls back.  PostgreSQL (several replicas)
runs without it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

_AMBIGUOUS = ""  # an identifier held by more than one resource: always ask the database


class _Lru(OrderedDict):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.limit:
            for _ in range(self.limit // 10):
                self.popitem(last=False)


class WriterCache:
    def __init__(self, limit: int = 20_000) -> None:
        self.resources = _Lru(limit)  # (type, id) -> Stored
        self.identities = _Lru(limit)  # (type, system, value) -> id, or _AMBIGUOUS
        self.watermarks = _Lru(limit)  # (type, id) -> event_us
        self._data_version: int | None = None
        self.hits = 0
        self.clears = 0

    def clear(self) -> None:
        self.resources.clear()
        self.identities.clear()
        self.watermarks.clear()
        self.clears += 1

    def check(self, cursor: Any) -> None:
        """Forget everything if another connection committed since the last batch."""
        version = cursor.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            if self._data_version is not None:
                self.clear()
            self._data_version = version

    # --- identities -------------------------------------------------------------------
    def identity(self, res_type: str, system: str, value: str) -> str | None:
        found = self.identities.get((res_type, system, value))
        if found:
            self.hits += 1
        return found or None

    def remember_identity(self, res_type: str, system: str, value: str, res_id: str) -> None:
        key = (res_type, system, value)
        known = self.identities.get(key)
        if known is not None and known != res_id:
            self.identities.put(key, _AMBIGUOUS)
        elif known is None:
            self.identities.put(key, res_id)

    def is_ambiguous(self, res_type: str, system: str, value: str) -> bool:
        return self.identities.get((res_type, system, value)) == _AMBIGUOUS
