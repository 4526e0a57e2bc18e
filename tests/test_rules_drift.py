"""R7 drift through the CLI (`gateway rules run --as-of`), and the scheduler: persisted,
never double-firing, one replica at a time."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta

import pytest

from conftest import RunningGateway, gateway_settings
from gateway import codes
from gateway.rules.scheduler import JOB, run_once
from gateway.store.database import make_engine
from gateway.store.reading import read_only
from rules_helpers import DIET, NOW, SALT, Timeline, flags, level, priority, tasks


def rules_run(url: str, as_of: datetime) -> dict:
    done = subprocess.run([sys.executable, "-m", "gateway", "rules", "run", "--as-of",
                           as_of.strftime("%Y-%m-%dT%H:%M:%SZ"), "--database-url", url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_drift_escalates_each_period_once_via_cli(gateway, database_url):
    drifting = Timeline(gateway, 201).registered()
    drifting.missed(1, NOW - timedelta(days=3), DIET).missed(2, NOW - timedelta(days=2), SALT).send()
    followed = Timeline(gateway, 202).registered()
    followed.missed(1, NOW - timedelta(days=3), DIET).missed(2, NOW - timedelta(days=2), SALT)
    followed.booked(3, NOW + timedelta(days=20), DIET).booked(4, NOW + timedelta(days=21), SALT).send()
    with gateway.http() as http:
        pid, other = drifting.patient_id(http), followed.patient_id(http)
        flag = flags(http, pid, codes.FLAG_WNB, "active")[0]
        assert level(flag) == 0 and priority(flag) == "PM"
    raised = datetime.fromisoformat(flag["period"]["start"].replace("Z", "+00:00"))

    assert rules_run(database_url, raised + timedelta(days=13))["actions"] == []
    summary = rules_run(database_url, raised + timedelta(days=15))
    assert {(a["patient"], a["rule"], a["action"]) for a in summary["actions"]} >= {
        (f"Patient/{pid}", "R1-was-not-brought", "updated")}
    assert not [a for a in summary["actions"] if a["patient"] == f"Patient/{other}"], "followed up: no drift"
    with gateway.http() as http:
        flag = flags(http, pid, codes.FLAG_WNB, "active")[0]
        assert level(flag) == 1 and priority(flag) == "PH"
        assert "Escalated (level 1)" in flag["text"]["div"]
        version = flag["meta"]["versionId"]
        review = tasks(http, pid, codes.TASK_REVIEW_MISSED)
        assert len(review) == 1 and review[0]["priority"] == "urgent"  # the open review follows the escalation
        assert level(flags(http, other, codes.FLAG_WNB, "active")[0]) == 0
    # The same clock again, or an earlier one: nothing fires twice.
    assert rules_run(database_url, raised + timedelta(days=15))["actions"] == []
    assert rules_run(database_url, raised + timedelta(days=5))["actions"] == []
    with gateway.http() as http:
        assert flags(http, pid, codes.FLAG_WNB, "active")[0]["meta"]["versionId"] == version
    # Another period with no follow-up: escalates again.
    rules_run(database_url, raised + timedelta(days=29))
    with gateway.http() as http:
        flag = flags(http, pid, codes.FLAG_WNB, "active")[0]
        assert level(flag) == 2
        assert int(flag["meta"]["versionId"]) == int(version) + 1
    with read_only(gateway.engine) as uow:
        runs = uow.fetchone("SELECT runs, last_as_of FROM rules_scheduler_state WHERE name = ?", (JOB,))
    assert runs[0] >= 5 and runs[1].startswith((raised + timedelta(days=29)).strftime("%Y-%m-%d"))


def test_completed_review_stops_drift(gateway, database_url):
    child = Timeline(gateway, 203).registered()
    child.missed(1, NOW - timedelta(days=3), DIET).missed(2, NOW - timedelta(days=2), SALT).send()
    with gateway.http() as http:
        pid = child.patient_id(http)
        review = tasks(http, pid, codes.TASK_REVIEW_MISSED)[0]
        body = {k: v for k, v in review.items() if k != "meta"}
        body["status"] = "completed"
        body["output"] = [{"type": {"coding": [{"system": codes.TASK_CODES, "code": codes.TASK_OUTPUT_OUTCOME}]},
                           "valueString": "Discussed with the school nurse; appointments re-booked by phone."}]
        assert http.put(f"/fhir/Task/{review['id']}", json=body).status_code == 200
        flag = flags(http, pid, codes.FLAG_WNB, "active")[0]
    raised = datetime.fromisoformat(flag["period"]["start"].replace("Z", "+00:00"))
    rules_run(database_url, raised + timedelta(days=30))
    with gateway.http() as http:
        assert level(flags(http, pid, codes.FLAG_WNB, "active")[0]) == 0
    # Reviewed and a year on with no further WNB: the Flag resolves (never deleted).
    rules_run(database_url, NOW + timedelta(days=400))
    with gateway.http() as http:
        assert [f["status"] for f in flags(http, pid, codes.FLAG_WNB)] == ["inactive"]


def test_a_second_replica_skips_while_a_run_holds_the_lock(database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time by construction")
    from gateway.store.database import migrate

    migrate(database_url)
    engine = make_engine(database_url)
    try:
        run_once(engine)  # creates the state row
        holder = engine.raw_connection()
        try:
            holder.cursor().execute("SELECT name FROM rules_scheduler_state WHERE name = %s FOR UPDATE", (JOB,))
            assert run_once(engine) == {"skipped": "another replica is running the rules now"}
        finally:
            holder.rollback()
            holder.close()
        assert "skipped" not in run_once(engine)
    finally:
        engine.dispose()


def test_scheduler_thread_runs_inside_serve_and_survives_restart(database_url):
    settings = gateway_settings(database_url, rules_interval_seconds=0.2)
    for _attempt in range(2):  # a restart continues from the stored state
        running = RunningGateway(settings).start()
        try:
            scheduler = running.server.runtime.workers[1]
            deadline = time.time() + 30
            while scheduler.runs < 1 and time.time() < deadline:
                time.sleep(0.05)
            assert scheduler.runs >= 1, scheduler.last_error
        finally:
            running.stop()
    engine = make_engine(database_url)
    try:
        with read_only(engine) as uow:
            runs = uow.fetchone("SELECT runs FROM rules_scheduler_state WHERE name = ?", (JOB,))[0]
    finally:
        engine.dispose()
    assert runs >= 2


def test_rules_run_rejects_a_bad_clock(sqlite_url):
    done = subprocess.run([sys.executable, "-m", "gateway", "rules", "run", "--as-of", "next tuesday",
                           "--database-url", sqlite_url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--as-of" in done.stderr



