"""The bulk-import fast path: validation in a worker process (same answers, same order as
in-process) and UnitOfWork's bulk mode (queued inserts, prefetched identities) never
reading around what it queued -- on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from gateway.gprecords.importer import Importer
from gateway.store.database import make_engine, migrate
from gateway.store.unit_of_work import unit_of_work

GP = Path(__file__).parent / "gp"


def _run(url: str, workers: int, batch_size: int = 2):
    engine = make_engine(url)
    try:
        with Importer(engine, workers=workers, batch_size=batch_size) as importer:
            return importer.import_path(GP / "bulk")
    finally:
        engine.dispose()


def test_worker_process_gives_the_same_report_as_in_process(tmp_path):
    reports = []
    for workers in (0, 1):
        url = f"sqlite:///{tmp_path / f'w{workers}.db'}"
        migrate(url)
        reports.append(_run(url, workers))
        again = _run(url, workers)  # idempotent through the worker too
        assert (again.created, again.unchanged) == (0, reports[-1].created)
    inline, pooled = reports
    assert [p.text() for p in pooled.problems] == [p.text() for p in inline.problems]
    assert any(p.text().startswith("Condition.ndjson line 3: not valid JSON") for p in pooled.problems)
    assert (pooled.created, pooled.error_count, pooled.skipped) == (inline.created, inline.error_count,
                                                                   inline.skipped)
    assert pooled.created == 6 and pooled.error_count == 4


def test_bulk_mode_reads_see_queued_writes(database_url):
    migrate(database_url)
    engine = make_engine(database_url)
    system = "https://example.org/ids"
    try:
        with unit_of_work(engine) as uow:
            uow.defer_inserts()
            uow.prefetch_identifiers("Patient", system, ["a", "b"])
            assert uow.find_by_token("Patient", "identifier", system, "a") == []  # answered, absent
            created = uow.create("Patient", {"resourceType": "Patient",
                                             "identifier": [{"system": system, "value": "a"}]})
            # the write forgot the prefetched answer; the query flushes the queue first
            assert uow.find_by_token("Patient", "identifier", system, "a") == [created.res_id]
            second = uow.create("Patient", {"resourceType": "Patient", "name": [{"family": "Queued"}]})
            assert uow.fetchone("SELECT COUNT(*) FROM idx_string WHERE res_id=?", (second.res_id,))[0] >= 1
            third = uow.create("Patient", {"resourceType": "Patient", "name": [{"family": "Rolled"}]})
            try:
                with uow.savepoint():
                    uow.create("Patient", {"resourceType": "Patient", "name": [{"family": "Gone"}]})
                    raise RuntimeError("roll this back")
            except RuntimeError:
                pass
            uow.create("Patient", {"resourceType": "Patient", "name": [{"family": "Last"}]})
        with unit_of_work(engine) as uow:
            families = {r[0] for r in uow.fetchall(
                "SELECT value_exact FROM idx_string WHERE res_type='Patient' AND param='family'")}
            assert families == {"Queued", "Rolled", "Last"}
            assert uow.fetchone("SELECT COUNT(*) FROM resource_versions")[0] == 4
            assert uow.get("Patient", third.res_id) is not None
            uow.prefetch_identifiers("Patient", system, ["a"])
            assert uow.find_by_token("Patient", "identifier", system, "a") == [created.res_id]
    finally:
        engine.dispose()
