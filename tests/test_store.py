"""The unit of work and the writer cache, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from gateway.store.cache import WriterCache
from gateway.store.database import make_engine, migrate
from gateway.store.reading import read_only
from gateway.store.unit_of_work import VersionConflict, _index_rows, unit_of_work

APPOINTMENT = {
    "resourceType": "Appointment",
    "status": "booked",
    "identifier": [{"system": "urn:test", "value": "A1"}],
    "start": "2025-06-02T10:30:00+01:00",
    "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"},
                    {"actor": {"reference": "Practitioner/d1"}, "status": "accepted"}],
}


@pytest.fixture
def engine(database_url):
    migrate(database_url)
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


def stored_index_rows(engine, res_type: str, res_id: str) -> dict[str, set]:
    out = {}
    with read_only(engine) as uow:
        for table, columns in (("idx_token", "param, system, code"), ("idx_string", "param, value_norm, value_exact"),
                               ("idx_date", "param, low_us, high_us"),
                               ("idx_reference", "param, target_type, target_id")):
            out[table] = set(uow.fetchall(f"SELECT res_type, res_id, {columns} FROM {table} "
                                          f"WHERE res_type=? AND res_id=?", (res_type, res_id)))
    return out


def expected_rows(res_type: str, res_id: str, content: dict) -> dict[str, set]:
    return {table: set(rows.values()) for table, rows in _index_rows(res_type, res_id, content).items()}


def test_update_rewrites_only_what_changed_and_leaves_exact_index_rows(engine):
    with unit_of_work(engine) as uow:
        created = uow.create("Appointment", APPOINTMENT)
    changed = {**APPOINTMENT, "status": "noshow", "participant": APPOINTMENT["participant"][:1]}
    with unit_of_work(engine) as uow:
        updated = uow.update("Appointment", created.res_id, changed)
    assert updated.version_id == 2
    assert stored_index_rows(engine, "Appointment", created.res_id) == \
        expected_rows("Appointment", created.res_id, updated.resource)
    with read_only(engine) as uow:
        assert uow.find_by_token("Appointment", "status", None, "booked") == []
        assert uow.find_by_token("Appointment", "status", None, "noshow") == [created.res_id]


def test_delete_clears_the_index_and_a_revival_restores_it(engine):
    with unit_of_work(engine) as uow:
        created = uow.create("Appointment", APPOINTMENT)
    with unit_of_work(engine) as uow:
        deleted = uow.delete("Appointment", created.res_id)
    assert deleted.deleted and deleted.version_id == 2
    assert all(not rows for rows in stored_index_rows(engine, "Appointment", created.res_id).values())
    with unit_of_work(engine) as uow:
        revived = uow.update("Appointment", created.res_id, APPOINTMENT)
    assert revived.version_id == 3
    assert stored_index_rows(engine, "Appointment", created.res_id) == \
        expected_rows("Appointment", created.res_id, revived.resource)


def test_expected_version_mismatch_is_a_conflict_and_writes_nothing(engine):
    with unit_of_work(engine) as uow:
        created = uow.create("Appointment", APPOINTMENT)
    with pytest.raises(VersionConflict):
        with unit_of_work(engine) as uow:
            uow.update("Appointment", created.res_id, {**APPOINTMENT, "status": "noshow"}, expected_version=7)
    with read_only(engine) as uow:
        assert uow.get("Appointment", created.res_id).version_id == 1


def test_writer_cache_forgets_when_another_connection_writes(sqlite_url):
    migrate(sqlite_url)
    engine = make_engine(sqlite_url)
    writer_conn = engine.raw_connection()
    cache = WriterCache()
    try:
        with unit_of_work(engine, conn=writer_conn, cache=cache) as uow:
            created = uow.create("Appointment", APPOINTMENT)
        with unit_of_work(engine, conn=writer_conn, cache=cache) as uow:
            assert uow.get("Appointment", created.res_id).version_id == 1  # from the cache
        with unit_of_work(engine) as other:  # another connection (e.g. the API, an import)
            other.update("Appointment", created.res_id, {**APPOINTMENT, "status": "cancelled"})
        with unit_of_work(engine, conn=writer_conn, cache=cache) as uow:
            fresh = uow.get("Appointment", created.res_id)
        assert (fresh.version_id, fresh.resource["status"]) == (2, "cancelled")
        assert cache.clears >= 1
    finally:
        writer_conn.close()
        engine.dispose()


def test_savepoint_rollback_undoes_writes_and_empties_the_cache(sqlite_url):
    migrate(sqlite_url)
    engine = make_engine(sqlite_url)
    conn = engine.raw_connection()
    cache = WriterCache()
    try:
        with unit_of_work(engine, conn=conn, cache=cache) as uow:
            with pytest.raises(RuntimeError):
                with uow.savepoint():
                    uow.create("Appointment", APPOINTMENT, res_id="rolled-back")
                    raise RuntimeError("mapping bug")
            assert uow.get("Appointment", "rolled-back") is None
            kept = uow.create("Appointment", APPOINTMENT)
        assert len(cache.resources) <= 1
        with read_only(engine) as uow:
            assert uow.get("Appointment", kept.res_id) is not None
            assert uow.get("Appointment", "rolled-back") is None
    finally:
        conn.close()
        engine.dispose()
