"""Crash safety: SIGKILL mid-stream, restart, resend what was not ACKed — every
message is stored exactly once and no resource is duplicated."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.hl7v2.ack import ack_code_of
from gateway.hl7v2.parser import parse_message
from gateway.ingest.mllp_client import MllpClient
from gateway.synthetic import siu_mix
from gateway.store.database import make_engine
from gateway.store.reading import read_only


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gateway(database_url: str, mllp_port: int, http_port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "GATEWAY_DATABASE_URL": database_url, "GATEWAY_MLLP_PORT": str(mllp_port),
           "GATEWAY_HTTP_PORT": str(http_port), "GATEWAY_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", mllp_port), timeout=0.5).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {log.read_text()[-2000:]}")
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("gateway did not start")


@pytest.mark.slow
def test_sigkill_mid_stream_then_resend_stores_every_message_exactly_once(database_url, tmp_path):
    messages = siu_mix(children=150, messages=2000, seed=5)
    mllp_port, http_port = free_port(), free_port()
    log = tmp_path / "gateway.log"
    proc = start_gateway(database_url, mllp_port, http_port, log)
    acked: set[int] = set()
    kill_after = 700
    try:
        with MllpClient("127.0.0.1", mllp_port, timeout=30) as client:
            for i, message in enumerate(messages):
                if i == kill_after:
                    # Kill while the next message is in flight: send it, then SIGKILL at once.
                    client._sock.sendall(b"\x0b" + message.encode() + b"\x1c\r")
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(10)
                    break
                assert ack_code_of(client.send(message)) == "AA"
                acked.add(i)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(acked) == kill_after
    proc = start_gateway(database_url, mllp_port, http_port, log)
    try:
        with MllpClient("127.0.0.1", mllp_port, timeout=30) as client:
            for i, message in enumerate(messages):
                if i not in acked:
                    assert ack_code_of(client.send(message)) == "AA"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-2000:]

    parsed = [parse_message(m) for m in messages]
    appointments = {p.find("SCH").value(1) for p in parsed}
    children = {p.find("PID").value(3) for p in parsed}
    engine = make_engine(database_url)
    with read_only(engine) as uow:
        accepted = uow.fetchone("SELECT COUNT(*), COUNT(DISTINCT control_id) FROM message_log WHERE accepted=?",
                                (True,))
        counts = dict(uow.fetchall("SELECT res_type, COUNT(*) FROM resources GROUP BY res_type"))
    engine.dispose()
    assert accepted == (2000, 2000)
    assert counts["Appointment"] == len(appointments)
    assert counts["Patient"] == len(children)
