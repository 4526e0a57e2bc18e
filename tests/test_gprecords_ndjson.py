"""Bulk NDJSON through the real CLI (``gateway import``): per-line errors, idempotent
re-import, bounded memory on 50,000 lines, and a served gateway writing meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gateway import codes
from gateway.store.database import make_engine
from gateway.store.reading import read_only
from gateway.synthetic import make_child, siu_message

sys.path.insert(0, str(Path(__file__).parent / "gp"))
from generate import write  # noqa: E402

GP = Path(__file__).parent / "gp"
GATEWAY = str(Path(sys.executable).with_name("gateway"))


def run_import(path: Path, url: str, *extra: str) -> tuple[subprocess.CompletedProcess, tuple[int, int]]:
    """``gateway import`` in a child process; returns the result and peak RSS (kB) of
    the importer alone and of the importer plus its validation worker."""
    proc = subprocess.Popen([GATEWAY, "import", str(path), "--database-url", url, "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    captured: dict[str, str] = {}
    readers = [threading.Thread(target=lambda n=name, f=f: captured.__setitem__(n, f.read()))
               for name, f in (("out", proc.stdout), ("err", proc.stderr))]
    for reader in readers:
        reader.start()
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        # VmHWM, sampled: not wait4's ru_maxrss, which also counts the pages the child
        # shared with this (large) pytest process between fork and exec.
        for pid in (proc.pid, *_children(proc.pid)):
            peaks[pid] = max(peaks.get(pid, 0), _hwm_kb(pid))
        time.sleep(0.05)
    for reader in readers:
        reader.join(30)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, captured["out"], captured["err"])
    return result, (peaks.get(proc.pid, 0), sum(peaks.values()))


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


def _hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def count(url: str, rtype: str) -> int:
    engine = make_engine(url)
    try:
        with read_only(engine) as uow:
            return uow.fetchone("SELECT COUNT(*) FROM resources WHERE res_type=? AND NOT deleted", (rtype,))[0]
    finally:
        engine.dispose()


def test_bulk_folder_reports_each_bad_line_and_imports_the_rest(database_url):
    result, _rss = run_import(GP / "bulk", database_url)
    assert result.returncode == 1, result.stderr
    err = result.stderr
    assert "Condition.ndjson line 2: reference 'Patient/p404' names no resource" in err
    assert "Condition.ndjson line 3: not valid JSON" in err
    assert "Condition.ndjson line 4:" in err and "onsetDateTime" in err
    assert "Appointment.ndjson line 2: unknown resource type 'Frobnicator'" in err
    assert "not merged: NHS number '9990000001' fails its check digit" in err
    assert "imported 6 (created 6, updated 0), unchanged 0, skipped 0, errors 4" in result.stdout
    assert count(database_url, "Patient") == 3 and count(database_url, "Condition") == 2

    again, _rss = run_import(GP / "bulk", database_url)
    assert "imported 0 (created 0, updated 0), unchanged 6" in again.stdout, again.stdout
    assert count(database_url, "Patient") == 3 and count(database_url, "Condition") == 2


def test_forward_references_are_retried(tmp_path, sqlite_url):
    path = tmp_path / "mixed.ndjson"
    path.write_text(
        '{"resourceType":"Condition","id":"c","code":{"text":"x"},"subject":{"reference":"Patient/p"}}\n'
        '{"resourceType":"Patient","id":"p","name":[{"family":"Later"}]}\n')
    result, _rss = run_import(path, sqlite_url, "--source", "https://gp.example/fhir")
    assert result.returncode == 0, result.stderr
    assert "created 2" in result.stdout


def test_fifty_thousand_lines_bounded_memory_while_serving(tmp_path, sqlite_gateway):
    """50,000 NDJSON lines through `gateway import` into the database a running gateway
    serves, while HL7 messages keep arriving over HTTP: both finish, memory stays bounded."""
    path = write(tmp_path / "bulk.ndjson", 50_000)
    url = sqlite_gateway.settings.database_url
    acks: list[str] = []

    def feed() -> None:
        with sqlite_gateway.http() as http:
            for i in range(40):
                from datetime import datetime, timezone

                message = siu_message(make_child(900 + i), 1, "S12", control_id=f"C{i}",
                                      when=datetime(2024, 6, 1, 9, tzinfo=timezone.utc))
                reply = http.post("/hl7v2", content=message, headers={"content-type": "application/hl7-v2"})
                acks.append(reply.headers.get("X-HL7-Ack-Code", "?"))

    feeder = threading.Thread(target=feed)
    feeder.start()
    result, (importer_kb, total_kb) = run_import(path, url)
    feeder.join(120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "imported 50000 (created 50000" in result.stdout, result.stdout
    assert acks and set(acks) <= {"AA", "CA"}, acks
    # The bound is for the importer; its validation worker (a second process that
    # imports the FHIR models) adds ~80-100 MB of its own, bounded too (docs/benchmarks.md).
    assert 0 < importer_kb < 250 * 1024, f"importer peak RSS {importer_kb // 1024} MB"
    assert total_kb < 350 * 1024, f"importer + worker peak RSS {total_kb // 1024} MB"
    with sqlite_gateway.http() as http:
        bundle = http.get("/fhir/Observation", params={"_count": 1, "_total": "accurate"}).json()
        assert bundle.get("total", 1) >= 1
    assert count(url, "Patient") >= 5000 + 40


@pytest.mark.parametrize("declared", ["1.0.2", "R5"])
def test_unsupported_declared_version(tmp_path, sqlite_url, declared):
    result, _rss = run_import(GP / "bulk" / "Patient.ndjson", sqlite_url, "--fhir-version", declared)
    assert result.returncode != 0 and "not supported" in result.stderr
    assert codes.NHS_NUMBER  # nothing written, and the database is still usable
    assert count(sqlite_url, "Patient") == 0
