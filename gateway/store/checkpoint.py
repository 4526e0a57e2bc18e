"""Background WAL checkpoints for SQLite.

In WAL mode every commit appends pages to the -wal file and, by default, the
committing connection copies them back into the database (with an fsync) every
1,000 pages — on the ingest writer's thread, while senders wait for their ACKs.
This thread does that work instead, on its own connection, so commits stay cheap;
SQLite's own auto-checkpoint (set high in database.py) remains as a safety net.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.engine import Engine

log = logging.getLogger("gateway.store")


class WalCheckpointer:
    def __init__(self, engine: Engine, interval: float = 1.0) -> None:
        self.engine = engine
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.engine.dialect.name != "sqlite" or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="gateway-wal-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        conn = self.engine.raw_connection()
        try:
            while not self._stop.wait(self.interval):
                try:
                    conn.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except Exception:  # busy or transient: the next round tries again
                    log.debug("WAL checkpoint skipped", exc_info=True)
        finally:
            # No final checkpoint here: SQLite checkpoints when the last connection
            # closes (engine.dispose), without waiting on anyone.
            conn.close()
