"""The one write path: every change, from any source, goes through a UnitOfWork.

A UnitOfWork wraps one database transaction.  Writing a resource writes its new
version, its history row and its search-index rows; the caller adds the message
log entry and outbox events to the same transaction, so they commit (or vanish)
together.

It talks DB-API directly rather than through the ORM: ingest writes ~20 rows per
message and the ORM's per-statement overhead was the bottleneck when measured
(see docs/benchmarks.md).  The tables themselves are defined once, in models.py.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

import orjson
from sqlalchemy.engine import Engine

from gateway.store import indexer
from gateway.store.cache import WriterCache
from gateway.store.hooks import check_before_write
from gateway.store.ids import new_id
from gateway.store.search_params import reference_params


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def fhir_instant(moment: datetime) -> str:
    """meta.lastUpdated form: UTC, microseconds, explicit offset."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def dumps(resource: dict[str, Any]) -> str:
    return orjson.dumps(resource).decode()


def loads(text: str | bytes) -> dict[str, Any]:
    return orjson.loads(text)


class VersionConflict(Exception):
    """If-Match / expected version did not match the stored version."""


@dataclass(slots=True)
class Stored:
    """A resource as stored: its JSON (with id and meta) and bookkeeping."""

    res_type: str
    res_id: str
    version_id: int
    last_updated: str
    deleted: bool
    resource: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.res_type}/{self.res_id}"


@dataclass(slots=True)
class Change:
    """One write in this unit of work, for event detection and the message log."""

    method: str  # create | update | delete
    before: Stored | None
    after: Stored


@dataclass(slots=True)
class OutboxRow:
    topic: str
    focus_type: str
    focus_id: str
    focus_version: int
    patient_id: str = ""
    payload: dict[str, Any] = field(default_factory=dict)


_sp_counter = itertools.count(1)


class UnitOfWork:
    """Reads and writes inside one open transaction on a DB-API connection."""

    def __init__(self, conn: Any, dialect: str, *, now: datetime | None = None,
                 cache: WriterCache | None = None) -> None:
        self.conn = conn
        self.cache = cache
        self.dialect = dialect
        self.cur = conn.cursor()
        self.now = now or utcnow()
        self.changes: list[Change] = []
        self.outbox: list[OutboxRow] = []
        self._sql_cache: dict[str, str] = {}
        self._stamp: tuple[datetime, str, int] | None = None
        # Bulk mode (defer_inserts): rows of *new* resources wait here, one list per INSERT,
        # and go out in one executemany per table before any other statement runs.
        self._pending: dict[str, list[tuple]] | None = None
        # prefetch_identifiers: (type, system, value) -> live ids, valid until a write touches it
        self._known_ids: dict[tuple[str, str, str], list[str]] = {}

    # --- SQL plumbing ---------------------------------------------------------------
    def sql(self, query: str) -> str:
        """Queries are written with '?' placeholders; psycopg wants '%s'."""
        if self.dialect == "sqlite":
            return query
        cached = self._sql_cache.get(query)
        if cached is None:
            cached = self._sql_cache[query] = query.replace("?", "%s")
        return cached

    def execute(self, query: str, params: tuple | list = ()) -> Any:
        if self._pending:
            self.flush()
        self.cur.execute(self.sql(query), params)
        return self.cur

    def executemany(self, query: str, rows: list[tuple]) -> None:
        if self._pending:
            self.flush()
        if rows:
            self.cur.executemany(self.sql(query), rows)

    def fetchall(self, query: str, params: tuple | list = ()) -> list[tuple]:
        if self._pending:
            self.flush()
        self.cur.execute(self.sql(query), params)
        return self.cur.fetchall()

    def fetchone(self, query: str, params: tuple | list = ()) -> tuple | None:
        if self._pending:
            self.flush()
        self.cur.execute(self.sql(query), params)
        return self.cur.fetchone()

    # --- bulk mode (the GP import) ------------------------------------------------------
    def defer_inserts(self) -> None:
        """From now on, queue the INSERTs of newly created resources (row, version, index
        rows) and write them one executemany per table: per-statement cost, not SQLite's,
        was most of a bulk import's SQL time.  Every other statement (a read, an update,
        a savepoint, commit) writes the queue first, so nothing ever reads around it; only
        pure inserts of fresh keys are queued, so their order between tables is free."""
        if self._pending is None:
            self._pending = {}

    def flush(self) -> None:
        pending = self._pending
        if pending:
            self._pending = {}
            for query, rows in pending.items():
                self.cur.executemany(self.sql(query), rows)

    def _queue(self, query: str, row: tuple) -> None:
        rows = self._pending.get(query)  # type: ignore[union-attr]
        if rows is None:
            self._pending[query] = [row]  # type: ignore[index]
        else:
            rows.append(row)

    def prefetch_identifiers(self, res_type: str, system: str, values: list[str]) -> None:
        """Look up many identifiers of one system in one query; ``find_by_token`` then answers
        them (found or not) without SQL until a write of this unit of work touches them."""
        wanted = sorted({v for v in values if (res_type, system, v) not in self._known_ids})
        for start in range(0, len(wanted), 400):
            chunk = wanted[start:start + 400]
            found: dict[str, list[str]] = {v: [] for v in chunk}
            for code, res_id in self.fetchall(
                    "SELECT DISTINCT t.code, t.res_id FROM idx_token t JOIN resources r ON r.res_type=t.res_type "
                    "AND r.res_id=t.res_id AND NOT r.deleted WHERE t.res_type=? AND t.param='identifier' "
                    f"AND t.system=? AND t.code IN ({','.join('?' * len(chunk))})", (res_type, system, *chunk)):
                found[code].append(res_id)
            for value, ids in found.items():
                self._known_ids[(res_type, system, value)] = ids

    def _forget_identifiers(self, res_type: str, resource: dict[str, Any] | None) -> None:
        if resource is not None and self._known_ids:
            for ident in resource.get("identifier") or ():
                if isinstance(ident, dict) and ident.get("system") and ident.get("value") is not None:
                    self._known_ids.pop((res_type, ident["system"], str(ident["value"])), None)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested transaction: one failed message never spoils its batch-mates."""
        name = f"sp{next(_sp_counter)}"
        self.flush()
        self.cur.execute(f"SAVEPOINT {name}")
        changes, outbox = len(self.changes), len(self.outbox)
        try:
            yield
        except BaseException:
            if self._pending:
                self._pending = {}  # queued inside the savepoint: rolled back with it
            self._known_ids.clear()
            self.cur.execute(f"ROLLBACK TO SAVEPOINT {name}")
            self.cur.execute(f"RELEASE SAVEPOINT {name}")
            if self.cache is not None:
                self.cache.clear()  # it may hold what was just rolled back
            del self.changes[changes:]
            del self.outbox[outbox:]
            raise
        self.flush()
        self.cur.execute(f"RELEASE SAVEPOINT {name}")

    # --- reads ------------------------------------------------------------------------
    def get(self, res_type: str, res_id: str) -> Stored | None:
        """The current version (callers must not modify the returned resource in place)."""
        cache = self.cache
        if cache is not None:
            stored = cache.resources.get((res_type, res_id))
            if stored is not None:
                cache.hits += 1
                return stored
        row = self.fetchone(
            "SELECT version_id, last_updated, deleted, content FROM resources WHERE res_type=? AND res_id=?",
            (res_type, res_id))
        if row is None:
            return None
        stored = Stored(res_type, res_id, row[0], row[1], bool(row[2]), loads(row[3]))
        if cache is not None:
            cache.resources.put((res_type, res_id), stored)
        return stored

    def find_by_token(self, res_type: str, param: str, system: str | None, code: str) -> list[str]:
        """Ids of live resources whose ``param`` has this (system, code); system None = any."""
        if self._known_ids and param == "identifier" and system is not None:
            known = self._known_ids.get((res_type, system, code))
            if known is not None:
                return list(known)
        cache = self.cache if param == "identifier" and system is not None else None
        if cache is not None:
            known = cache.identity(res_type, system, code)
            if known is not None:
                stored = self.get(res_type, known)
                return [known] if stored is not None and not stored.deleted else []
        if system is None:
            rows = self.fetchall(
                "SELECT DISTINCT t.res_id FROM idx_token t JOIN resources r ON r.res_type=t.res_type "
                "AND r.res_id=t.res_id AND NOT r.deleted WHERE t.res_type=? AND t.param=? AND t.code=?",
                (res_type, param, code))
        else:
            rows = self.fetchall(
                "SELECT DISTINCT t.res_id FROM idx_token t JOIN resources r ON r.res_type=t.res_type "
                "AND r.res_id=t.res_id AND NOT r.deleted WHERE t.res_type=? AND t.param=? AND t.code=? "
                "AND t.system=?",
                (res_type, param, code, system))
        ids = [r[0] for r in rows]
        if cache is not None and len(ids) == 1 and not cache.is_ambiguous(res_type, system, code):
            cache.remember_identity(res_type, system, code, ids[0])
        return ids

    def referrers(self, target_type: str, target_id: str) -> list[tuple[str, str]]:
        """Every resource that references target (for merges).  Goes through the
        search index one reference parameter at a time, so no extra index on the
        target has to be maintained on every write for this rare operation."""
        found: dict[tuple[str, str], None] = {}
        for res_type, param in reference_params():
            for row in self.fetchall("SELECT res_id FROM idx_reference WHERE res_type=? AND param=? "
                                     "AND target_id=? AND target_type=?", (res_type, param, target_id, target_type)):
                found[(res_type, row[0])] = None
        return list(found)

    # --- writes -----------------------------------------------------------------------
    def create(self, res_type: str, resource: dict[str, Any], *, res_id: str | None = None,
               source: str = "") -> Stored:
        res_id = res_id or new_id()
        resource = check_before_write(self, res_type, resource, None)
        return self._write(res_type, res_id, resource, None, "create", source)

    def update(self, res_type: str, res_id: str, resource: dict[str, Any], *,
               expected_version: int | None = None, source: str = "",
               before: Stored | None = None) -> Stored:
        """Write a new version (creating the resource if the id is new: update-as-create)."""
        if before is None:
            before = self.get(res_type, res_id)
        if expected_version is not None and (before is None or before.version_id != expected_version):
            raise VersionConflict(
                f"{res_type}/{res_id} is at version {before.version_id if before else 'none'}, "
                f"not {expected_version}")
        resource = check_before_write(self, res_type, resource, before if before and not before.deleted else None)
        return self._write(res_type, res_id, resource, before, "update" if before else "create", source)

    def delete(self, res_type: str, res_id: str, *, expected_version: int | None = None) -> Stored | None:
        """Soft delete: a new, deleted version; history keeps every earlier one."""
        before = self.get(res_type, res_id)
        if before is None or before.deleted:
            return None
        if expected_version is not None and before.version_id != expected_version:
            raise VersionConflict(f"{res_type}/{res_id} is at version {before.version_id}")
        version = before.version_id + 1
        stamp = fhir_instant(self.now)
        stamp_us = indexer.to_us(self.now)
        self._forget_identifiers(res_type, before.resource)
        content = dict(before.resource)
        content["meta"] = {**content.get("meta", {}), "versionId": str(version), "lastUpdated": stamp}
        text = dumps(content)
        self.execute("UPDATE resources SET version_id=?, last_updated=?, last_updated_us=?, deleted=? "
                     "WHERE res_type=? AND res_id=?",
                     (version, stamp, stamp_us, True, res_type, res_id))
        self.execute("INSERT INTO resource_versions (res_type, res_id, version_id, last_updated, "
                     "last_updated_us, deleted, method, content) VALUES (?,?,?,?,?,?,?,?)",
                     (res_type, res_id, version, stamp, stamp_us, True, "delete", text))
        self._clear_index(res_type, res_id)
        after = Stored(res_type, res_id, version, stamp, True, content)
        self.changes.append(Change("delete", before, after))
        if self.cache is not None:
            self.cache.resources.put((res_type, res_id), after)
        return after

    def emit(self, row: OutboxRow) -> None:
        self.outbox.append(row)

    def flush_outbox(self) -> None:
        """Write queued events; called just before commit."""
        if not self.outbox:
            return
        stamp = fhir_instant(self.now)
        self.executemany(
            "INSERT INTO outbox_events (created_at, topic, focus_type, focus_id, focus_version, "
            "patient_id, payload) VALUES (?,?,?,?,?,?,?)",
            [(stamp, e.topic, e.focus_type, e.focus_id, e.focus_version, e.patient_id,
              dumps(e.payload)) for e in self.outbox])
        self.outbox.clear()

    # --- internals --------------------------------------------------------------------
    def _stamps(self) -> tuple[str, int]:
        """meta.lastUpdated and its microseconds for ``now``: formatted once per unit of work,
        not once per write (a bulk import writes hundreds of versions in one)."""
        stamp = self._stamp
        if stamp is None or stamp[0] is not self.now:
            stamp = self._stamp = (self.now, fhir_instant(self.now), indexer.to_us(self.now))
        return stamp[1], stamp[2]

    def _write(self, res_type: str, res_id: str, resource: dict[str, Any], before: Stored | None,
               method: str, source: str) -> Stored:
        version = (before.version_id + 1) if before else 1
        stamp, stamp_us = self._stamps()
        content = {"resourceType": res_type, "id": res_id}
        content.update((k, v) for k, v in resource.items() if k not in ("resourceType", "id", "meta"))
        meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
        meta["versionId"] = str(version)
        meta["lastUpdated"] = stamp
        if source:
            meta["source"] = source
        content["meta"] = meta
        text = dumps(content)
        if self._known_ids:
            self._forget_identifiers(res_type, content)
            if before is not None:
                self._forget_identifiers(res_type, before.resource)
        if before is None and self._pending is not None:
            self._queue(_INSERT_RESOURCE, (res_type, res_id, version, stamp, stamp_us, False,
                                           meta.get("source", ""), text))
            self._queue(_INSERT_VERSION, (res_type, res_id, version, stamp, stamp_us, False, method, text))
        elif before is None:
            self.execute(_INSERT_RESOURCE,
                         (res_type, res_id, version, stamp, stamp_us, False, meta.get("source", ""), text))
        else:
            self.execute("UPDATE resources SET version_id=?, last_updated=?, last_updated_us=?, deleted=?, "
                         "source=?, content=? WHERE res_type=? AND res_id=?",
                         (version, stamp, stamp_us, False, meta.get("source", ""), text, res_type, res_id))
        if before is not None or self._pending is None:
            self.execute(_INSERT_VERSION, (res_type, res_id, version, stamp, stamp_us, False, method, text))
        # A deleted resource has no index rows (delete cleared them).
        previous = before.resource if before is not None and not before.deleted else None
        self._write_index(res_type, res_id, content, previous)
        after = Stored(res_type, res_id, version, stamp, False, content)
        self.changes.append(Change(method, before, after))
        if self.cache is not None:
            self.cache.resources.put((res_type, res_id), after)
            for ident in content.get("identifier") or ():
                if isinstance(ident, dict) and ident.get("system") and ident.get("value"):
                    self.cache.remember_identity(res_type, ident["system"], str(ident["value"]), res_id)
        return after

    def _clear_index(self, res_type: str, res_id: str) -> None:
        for table in ("idx_token", "idx_string", "idx_date", "idx_reference"):
            self.execute(f"DELETE FROM {table} WHERE res_type=? AND res_id=?", (res_type, res_id))

    def _write_index(self, res_type: str, res_id: str, content: dict[str, Any],
                     previous: dict[str, Any] | None = None) -> None:
        """Bring the index rows in line with ``content``.

        On an update only the rows that differ from ``previous`` (the version being
        replaced, whose rows are in the tables) are deleted and inserted: a no-show
        changes one status row, not the twenty rows of the appointment.
        """
        new = _index_rows(res_type, res_id, content)
        old = _index_rows(res_type, res_id, previous) if previous is not None else None
        if old is None and self._pending is not None:
            for table, (insert_sql, _delete_sql, _key_of) in _INDEX_SQL.items():
                rows = new[table]
                if rows:
                    queued = self._pending.setdefault(insert_sql, [])
                    queued.extend(rows.values())
            return
        for table, (insert_sql, delete_sql, key_of) in _INDEX_SQL.items():
            rows = new[table]
            if old is not None:
                before = old[table]
                gone = [key_of(r) for k, r in before.items() if k not in rows]
                self.executemany(delete_sql, gone)
                rows = {k: r for k, r in rows.items() if k not in before}
            self.executemany(insert_sql, list(rows.values()))


def _index_rows(res_type: str, res_id: str, content: dict[str, Any]) -> dict[str, dict[tuple, tuple]]:
    """Index rows keyed by their primary key (so a value twice in a resource is one row)."""
    rows = indexer.extract(res_type, content)
    head = (res_type, res_id)  # token/date/reference rows are their own key: prefix, don't rebuild
    return {
        "idx_token": {row: head + row for row in rows.token},
        "idx_string": {(p, exact): (res_type, res_id, p, norm, exact) for p, norm, exact in rows.string},
        "idx_date": {row: head + row for row in rows.date},
        "idx_reference": {row: head + row for row in rows.reference},
    }


_INSERT_RESOURCE = ("INSERT INTO resources (res_type, res_id, version_id, last_updated, last_updated_us, "
                    "deleted, source, content) VALUES (?,?,?,?,?,?,?,?)")
_INSERT_VERSION = ("INSERT INTO resource_versions (res_type, res_id, version_id, last_updated, "
                   "last_updated_us, deleted, method, content) VALUES (?,?,?,?,?,?,?,?)")

# table -> (insert, delete-by-primary-key, row -> delete parameters)
_INDEX_SQL = {
    "idx_token": ("INSERT INTO idx_token (res_type, res_id, param, system, code) VALUES (?,?,?,?,?)",
                  "DELETE FROM idx_token WHERE res_id=? AND res_type=? AND param=? AND system=? AND code=?",
                  lambda r: (r[1], r[0], r[2], r[3], r[4])),
    "idx_string": ("INSERT INTO idx_string (res_type, res_id, param, value_norm, value_exact) VALUES (?,?,?,?,?)",
                   "DELETE FROM idx_string WHERE res_id=? AND res_type=? AND param=? AND value_exact=?",
                   lambda r: (r[1], r[0], r[2], r[4])),
    "idx_date": ("INSERT INTO idx_date (res_type, res_id, param, low_us, high_us) VALUES (?,?,?,?,?)",
                 "DELETE FROM idx_date WHERE res_id=? AND res_type=? AND param=? AND low_us=? AND high_us=?",
                 lambda r: (r[1], r[0], r[2], r[3], r[4])),
    "idx_reference": ("INSERT INTO idx_reference (res_type, res_id, param, target_type, target_id) "
                      "VALUES (?,?,?,?,?)",
                      "DELETE FROM idx_reference WHERE res_id=? AND res_type=? AND param=? AND target_type=? "
                      "AND target_id=?",
                      lambda r: (r[1], r[0], r[2], r[3], r[4])),
}


def dialect_of(engine: Engine) -> str:
    return "sqlite" if engine.dialect.name == "sqlite" else "postgresql"


@contextmanager
def unit_of_work(engine: Engine, *, now: datetime | None = None, conn: Any = None,
                 cache: WriterCache | None = None) -> Iterator[UnitOfWork]:
    """Open a transaction, yield a UnitOfWork, commit (with its outbox) or roll back.

    ``conn`` lets a long-lived writer reuse its own DB-API connection: SQLite keeps
    its page cache per connection, and a connection that only this writer writes
    through keeps that cache warm (a pooled one is cold on every checkout).
    """
    raw = conn if conn is not None else engine.raw_connection()
    dialect = dialect_of(engine)
    try:
        if dialect == "sqlite":
            cursor = raw.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            if cache is not None:
                cache.check(cursor)
        else:
            cache = None  # several replicas may write: never trust memory over the database
        uow = UnitOfWork(raw, dialect, now=now, cache=cache)
        yield uow
        uow.flush()
        uow.flush_outbox()
        raw.commit()
    except BaseException:
        raw.rollback()
        if cache is not None:
            cache.clear()
        raise
    finally:
        if conn is None:
            raw.close()
