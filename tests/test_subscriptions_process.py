"""Delivery in its own OS process (GATEWAY_DELIVERY_PROCESS, notify/process.py):
handshake and first event arrive promptly, the child stops with the gateway, and it
never outlives a parent that was killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import RunningGateway, gateway_settings
from subscription_helpers import FAST, create_active, no_shows, subscription
from subscription_receiver import Receiver

from gateway.notify.process import DeliveryProcess


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent has not reaped it yet).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_process_delivers_handshake_and_event_then_stops_with_the_gateway(database_url: str) -> None:
    receiver = Receiver()
    running = RunningGateway(gateway_settings(database_url, delivery_process=True, **FAST)).start()
    worker = running.server.runtime.workers[0]
    try:
        assert isinstance(worker, DeliveryProcess) and worker.pid != os.getpid()
        pid = worker.pid
        with running.http() as client:
            create_active(client, subscription(receiver.url), timeout=20)  # the child imports first (~1 s)
            started = time.time()
            no_shows(running.mllp_port, 1)
            assert receiver.wait_for(lambda r: r.event_numbers() == [1]), receiver.received
            # Woken by polling (delivery_poll_seconds=0.02), not a slow fallback.
            assert time.time() - started < 2.0
            # Every attempt is in the log the parent serves.
            log = client.get("/notify/deliveries").json()["deliveries"]
            assert sorted(d["kind"] for d in log) == ["event-notification", "handshake"]
            # A second subscription's handshake goes through the pipe's wake, then it gets event 2.
            started = time.time()
            create_active(client, subscription(receiver.url + "/second"))
            assert time.time() - started < 2.0
    finally:
        started = time.time()
        running.stop()
        receiver.close()
    assert time.time() - started < 10
    assert not _alive(pid)


def test_child_exits_when_its_parent_is_killed(sqlite_url: str, tmp_path: Path) -> None:
    """SIGKILL leaves no chance to stop anything: the child sees EOF on its pipe and exits."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from gateway.settings import Settings
        from gateway.store.database import migrate
        from gateway.notify.process import DeliveryProcess
        migrate({sqlite_url!r})
        process = DeliveryProcess(None, Settings(database_url={sqlite_url!r}, log_level="warning"))
        process.start()
        print(process.pid, flush=True)
        time.sleep(120)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
    try:
        child = int(parent.stdout.readline())
        time.sleep(1.5)  # let it get going (imports, first ticks)
        assert _alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.time() + 15
        while time.time() < deadline and _alive(child):
            time.sleep(0.1)
        assert not _alive(child)
    finally:
        if parent.poll() is None:
            parent.kill()
