"""Two real `gateway serve` processes on one PostgreSQL: every event is delivered once
per subscription (leases + SKIP LOCKED), in order, with no gaps."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from subscription_helpers import create_active, no_shows, subscription
from subscription_receiver import Receiver

pytestmark = pytest.mark.postgres


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(database_url: str, log: Path) -> tuple[subprocess.Popen, int, int]:
    http_port, mllp_port = _free_port(), _free_port()
    env = {**os.environ, "GATEWAY_DATABASE_URL": database_url, "GATEWAY_HTTP_PORT": str(http_port),
           "GATEWAY_MLLP_PORT": str(mllp_port), "GATEWAY_LOG_LEVEL": "warning",
           "GATEWAY_DELIVERY_POLL_SECONDS": "0.02", "GATEWAY_DELIVERY_RETRY_BASE_SECONDS": "0.05",
           "GATEWAY_DELIVERY_RETRY_MAX_SECONDS": "0.3", "GATEWAY_DELIVERY_TIMEOUT_SECONDS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=1).status_code == 200:
                return proc, http_port, mllp_port
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"gateway did not start: {log.read_text()[-2000:]}")


@pytest.fixture
def pg_url(postgres_admin_url: str):  # noqa: ANN201
    from conftest import _fresh_postgres

    yield from _fresh_postgres(postgres_admin_url)


def test_two_replicas_deliver_each_event_once(pg_url: str, tmp_path: Path) -> None:
    receivers = [Receiver() for _ in range(4)]
    first, http_a, mllp_a = _start(pg_url, tmp_path / "a.log")
    second, http_b, mllp_b = _start(pg_url, tmp_path / "b.log")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{http_a}", timeout=30) as a, \
                httpx.Client(base_url=f"http://127.0.0.1:{http_b}", timeout=30) as b:
            ids = [create_active(a if i % 2 else b, subscription(r.url, max_count=5)) for i, r in enumerate(receivers)]
            # Events written through both replicas.
            no_shows(mllp_a, 30, first_child=1, start_control=0)
            no_shows(mllp_b, 30, first_child=100, start_control=1000)
            for r in receivers:
                assert r.wait_for(lambda x: len(x.event_numbers()) >= 60, timeout=30), len(r.event_numbers())
            time.sleep(0.5)  # a duplicate, if any, would arrive now
            for r in receivers:
                assert r.event_numbers() == list(range(1, 61))  # once each, in order
                assert len(r.notifications("handshake")) == 1
            replicas = {d["replica"] for sub in ids for d in a.get(
                "/notify/deliveries", params={"subscription": sub, "limit": 1000}).json()["deliveries"]}
            assert replicas  # which replica delivered is recorded with every attempt
    finally:
        for proc in (first, second):
            proc.terminate()
        for proc in (first, second):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for r in receivers:
            r.close()
