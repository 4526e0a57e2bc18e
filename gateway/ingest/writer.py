"""Group commit: one writer thread, many messages per transaction, ACK after commit.

Senders wait for each ACK, so per-message commits would cap throughput at the
commit rate.  Instead every connection's message goes on one queue; the writer
takes whatever is waiting (up to ``batch_max``), processes each inside its own
savepoint (one bad message never spoils the others), commits once, and only then
releases the ACKs.  A single writer also serialises patient matching, so two
connections can never create the same child twice.

If the commit itself fails (database gone), every message in the batch is
answered AE so the senders retry; nothing was half-stored.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from gateway.hl7v2.ack import build_ack, generic_reject
from gateway.hl7v2.errors import Issue
from gateway.hl7v2.parser import ParseError, parse_message
from gateway.ingest.processor import Inbound, MessageProcessor, Processed
from gateway.store.cache import WriterCache
from gateway.store.unit_of_work import unit_of_work

log = logging.getLogger("gateway.ingest")

_STOP = object()


@dataclass(slots=True)
class _Job:
    inbound: Inbound
    future: Future


class GroupCommitWriter:
    def __init__(self, engine: Engine, processor: MessageProcessor, *, batch_max: int = 64) -> None:
        self.engine = engine
        self.processor = processor
        self.batch_max = max(1, batch_max)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn = None  # the writer thread's own DB-API connection (see unit_of_work)
        self.cache = WriterCache() if engine.dialect.name == "sqlite" else None
        self.stats = {"messages": 0, "batches": 0, "commit_failures": 0}

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gateway-writer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish everything already queued, then stop the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None
        self._drop_connection()

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # already broken: nothing to close
                pass
            self._conn = None

    # --- submitting -----------------------------------------------------------------
    def submit(self, inbound: Inbound) -> Future:
        future: Future = Future()
        if self._thread is None:
            future.set_exception(RuntimeError("the writer is not running"))
            return future
        self._queue.put(_Job(inbound, future))
        return future

    async def process(self, inbound: Inbound) -> Processed:
        return await asyncio.wrap_future(self.submit(inbound))

    def process_now(self, inbound: Inbound) -> Processed:
        """Process one message in its own transaction, on the caller's thread (CLI use)."""
        return self._process_batch([_Job(inbound, Future())])[0]

    # --- the writer thread ------------------------------------------------------------
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            jobs = [first]
            stop_after = False
            while len(jobs) < self.batch_max:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop_after = True
                    break
                jobs.append(nxt)
            results = self._process_batch(jobs, reuse_connection=True)
            for job, result in zip(jobs, results):
                if not job.future.done():
                    job.future.set_result(result)
            if stop_after:
                return

    def _process_batch(self, jobs: list[_Job], reuse_connection: bool = False) -> list[Processed]:
        started = time.perf_counter()
        conn = None
        if reuse_connection:
            if self._conn is None:
                self._conn = self.engine.raw_connection()
            conn = self._conn
        try:
            with unit_of_work(self.engine, conn=conn, cache=self.cache if reuse_connection else None) as uow:
                results = [self.processor.process(uow, job.inbound) for job in jobs]
        except Exception as exc:  # the commit (or the connection) failed: nothing stored
            self.stats["commit_failures"] += 1
            if reuse_connection:
                self._drop_connection()  # a fresh connection for the next batch
            log.exception("batch of %d messages could not be committed", len(jobs))
            return [_storage_failure(job.inbound, exc) for job in jobs]
        self.stats["messages"] += len(jobs)
        self.stats["batches"] += 1
        log.debug("committed %d messages in %.1f ms", len(jobs), (time.perf_counter() - started) * 1000)
        return results


def _storage_failure(inbound: Inbound, exc: Exception) -> Processed:
    """AE for a message whose transaction did not commit: the sender should resend."""
    issue = Issue("E", 207, f"the message could not be stored ({type(exc).__name__}); please resend")
    try:
        msg = parse_message(inbound.raw)
    except ParseError:
        return Processed(generic_reject(inbound.raw[:4096], issue.text), "AR", "error", None, [], [issue])
    return Processed(build_ack(msg, "AE", [issue], text=issue.text), "AE", "error", None, [], [issue])
