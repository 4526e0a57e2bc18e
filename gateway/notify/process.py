"""The delivery worker in its own OS process (``GATEWAY_DELIVERY_PROCESS``, default on).

Why: in one process the delivery worker shares the interpreter lock with HL7
ingest (the group-commit writer thread and the event loop).  At 50 subscribers
x 200 events/s it wants ~10,000 event-deliveries/s, and every one of them took
CPU from ingest: ACKs slowed, the queue grew and latency went to seconds
(docs/benchmarks.md).  A child process gets its own interpreter (and, on a
multi-core machine, its own core).

How: a fresh interpreter (``python -m gateway.notify.process``; no forked copies
of the parent's threads, sockets or SQLite connections, and unlike a
multiprocessing ``spawn`` child no re-import of the parent's ``__main__``) opens
its own engine and runs the same ``DeliveryWorker``;
the replica leases in notify/queue.py already let a delivery-only process work
beside writers.  One pipe (the child's stdin, one command a line) joins the two:

* parent -> child: the settings (JSON, first line), ``wake`` (a new Subscription: handshake now, not at the next
  poll), ``base_url`` (known only once HTTP has bound its port), ``stop``;
* the child stops when the pipe closes, so it never outlives a parent that was
  killed (EOF on the pipe), and it ignores SIGINT (a terminal's Ctrl-C reaches
  the whole process group; the parent decides when delivery stops).

On stop the child records its last attempts and releases its leases, as the
in-process worker does.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from gateway.notify import signals

log = logging.getLogger("gateway.notify")


class DeliveryProcess:
    """Same start()/stop()/wake()/base_url surface as DeliveryWorker, in a child process."""

    def __init__(self, engine: Any, settings: Any) -> None:
        self.settings = settings
        self._base_url = (settings.public_base_url or f"http://{settings.host}:{settings.http_port}/fhir").rstrip("/")
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()  # one writer at a time on the pipe

    @property
    def base_url(self) -> str:
        return self._base_url

    @base_url.setter
    def base_url(self, value: str) -> None:
        self._base_url = value
        self._send(f"base_url {value}")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        if self._proc is not None or not self.settings.delivery_enabled:
            return
        # A fresh interpreter running this module, not multiprocessing: nothing of the
        # parent (its __main__, threads, sockets, SQLite handles) is re-imported or copied.
        self._proc = subprocess.Popen([sys.executable, "-m", "gateway.notify.process"], stdin=subprocess.PIPE,
                                      close_fds=True)
        self._send(self.settings.model_dump_json())
        self._send(f"base_url {self._base_url}")
        signals.on_wake(self.wake)

    def wake(self) -> None:
        self._send("wake")

    def _send(self, line: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        with self._lock:
            try:
                proc.stdin.write(line.encode() + b"\n")
                proc.stdin.flush()
            except (OSError, ValueError):  # the child has gone; stop() reports it
                pass

    def stop(self, timeout: float = 15.0) -> None:
        proc = self._proc
        if proc is None:
            return
        signals.off_wake(self.wake)
        self._send("stop")
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("delivery process did not stop in %.0f s; killing it", timeout)
            proc.kill()
            proc.wait(5)
        with self._lock:
            if proc.stdin is not None:
                proc.stdin.close()
        if proc.returncode not in (0, None):
            log.warning("delivery process exited with status %s", proc.returncode)
        self._proc = None


def run_child() -> None:
    """The child's main: settings from the first line of stdin, then commands, one a line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from gateway.notify.delivery import DeliveryWorker
    from gateway.settings import Settings, use_settings
    from gateway.store.database import make_engine

    first = sys.stdin.buffer.readline()
    if not first:
        return
    settings = Settings.model_validate_json(first)
    use_settings(settings)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s[delivery %(process)d]: %(message)s")
    engine = make_engine(settings.database_url, pool_size=4)
    worker = DeliveryWorker(engine, settings)

    def stop() -> None:
        worker._stopping.set()
        worker.wake()

    def listen() -> None:
        for raw in sys.stdin.buffer:  # ends at EOF: the parent closed the pipe or died
            line = raw.decode().strip()
            if line == "wake":
                worker.wake()
            elif line.startswith("base_url "):
                worker.base_url = line[len("base_url "):]
            elif line == "stop":
                break
        stop()

    signal.signal(signal.SIGTERM, lambda *_: stop())
    threading.Thread(target=listen, name="gateway-delivery-pipe", daemon=True).start()
    try:
        worker._run()  # returns once stopping is set and the last attempts are recorded
    finally:
        engine.dispose()


def make_delivery(engine: Any, settings: Any) -> Any:
    """The delivery worker for a Runtime: a child process, or a thread in this process."""
    if getattr(settings, "delivery_process", False):
        return DeliveryProcess(engine, settings)
    from gateway.notify.delivery import DeliveryWorker

    return DeliveryWorker(engine, settings)


if __name__ == "__main__":
    run_child()
    # Everything is recorded and closed: skip the interpreter's slow teardown (a quicker stop).
    logging.shutdown()
    os._exit(0)
