"""The delivery worker: outbox events -> numbered per subscription -> signed rest-hook POSTs.

One thread per process runs an asyncio loop:

* a **tick** every ``delivery_poll_seconds`` (or when woken) runs one short
  database transaction on a helper thread: record finished attempts, match new
  outbox events to subscriptions (notify/queue.py), claim/renew leases, then
  read the state of the subscriptions this replica holds;
* for each held subscription with work (a handshake, events past
  ``delivered_through`` whose backoff has expired, a heartbeat due) it starts one
  **task**; a subscription never has two, so event N+1 is sent only after N was
  accepted (per-subscription order), while different subscriptions proceed in
  parallel (at most ``delivery_concurrency`` requests at once, each with its own
  timeout): a slow or dead endpoint holds its own task, never the others;
* a task sends up to ``max-count`` events per notification and keeps going while
  its endpoint keeps accepting (a backlog drains in large bundles); a failure
  schedules the next attempt ``base * 2**(n-1)`` seconds later (capped, jittered)
  and after ``delivery_retry_hours`` of failing the subscription goes to ``error`` —
  its events stay numbered and replayable with ``$events``; nothing is dropped.

With no live subscription the tick is one cheap read every half second.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import orjson

from gateway.notify import queue, signals
from gateway.notify.notification import (
    SIGNATURE_HEADER,
    SUBSCRIPTION_HEADER,
    Event,
    load_events,
    load_versions,
    notification_bundle,
    sign,
)
from gateway.notify.topics import topic_url
from gateway.store.hooks import run_after_changes
from gateway.store.reading import read_only
from gateway.store.unit_of_work import unit_of_work

log = logging.getLogger("gateway.notify")

IDLE_POLL_SECONDS = 0.5
BUFFER_EVENTS = 20_000  # per subscription; beyond that (a long outage) events are read from the database


def _now_us() -> int:
    return time.time_ns() // 1000


class DeliveryWorker:
    def __init__(self, engine: Any, settings: Any) -> None:
        self.engine = engine
        self.settings = settings
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.base_url = (settings.public_base_url or f"http://{settings.host}:{settings.http_port}/fhir").rstrip("/")
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._outcomes: deque[queue.Outcome] = deque()
        self._subs: dict[str, queue.LeasedSub] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._configs = queue.ConfigCache()
        self._buffers: dict[str, dict[int, Event]] = {}
        self._write_conn: Any = None  # SQLite: the tick's own connection (see _writing)
        self.stats = {"ticks": 0, "matched": 0, "sent": 0, "failed": 0}

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None and self.settings.delivery_enabled:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="gateway-delivery", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop promptly: in-flight requests are abandoned (their events stay
        undelivered and are sent again later, by this or another replica)."""
        if self._thread is None:
            return
        self._stopping.set()
        self.wake()
        self._thread.join(timeout)
        self._thread = None

    def wake(self) -> None:
        loop, event = self._loop, self._wake
        if loop is not None and event is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                pass

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:  # never take the process down; log loudly
            log.exception("delivery worker stopped on an error")

    # --- the loop -------------------------------------------------------------------
    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        signals.on_wake(self.wake)
        concurrency = max(1, int(self.settings.delivery_concurrency))
        self._slots = asyncio.Semaphore(concurrency)
        # Two threads: enough to overlap a tick with a read; more only contend for the GIL with ingest.
        db = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gateway-delivery-db")
        self._db = db
        client = _Clients(self.settings.delivery_timeout_seconds)
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    idle, numbered = await self._loop.run_in_executor(db, self._tick)
                    self._buffer(numbered)
                    failures = 0
                except Exception as exc:  # database away: try again, slower
                    failures += 1
                    idle, numbered = True, []
                    log.warning("delivery tick failed (%s: %s); retrying", type(exc).__name__, exc)
                    await asyncio.sleep(min(5.0, 0.2 * failures))
                self._dispatch(client)
                wait = IDLE_POLL_SECONDS if idle else self.settings.delivery_poll_seconds
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
        finally:
            signals.off_wake(self.wake)
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            await client.close_all()
            try:
                await self._loop.run_in_executor(db, self._final_tick)
            except Exception as exc:
                log.warning("delivery: could not record the last attempts (%s)", exc)
            db.shutdown(wait=True)
            self._close_write_conn()

    def _tick(self) -> tuple[bool, list]:
        """One transaction of bookkeeping; returns (nothing to deliver?, events numbered now)."""
        numbered: list = []
        self.stats["ticks"] += 1
        outcomes = self._drain()
        now = _now_us()
        lease_us = int(self.settings.delivery_lease_seconds * 1_000_000)
        with read_only(self.engine) as reader:
            live = queue.live_subscriptions(reader)
            pending = queue.has_pending(reader)
            claimable = live and queue.needs_claim(reader, self.replica, now, lease_us)
        if outcomes or pending or claimable:
            with self._writing() as uow:
                uow.subscription_internal = True
                queue.record(uow, self.replica, outcomes)
                if live:
                    while True:
                        handled = queue.match(uow, self._configs, numbered)
                        self.stats["matched"] += handled
                        if handled < queue.MATCH_BATCH:
                            break
                    queue.claim(uow, self.replica, now, lease_us)
                elif pending:
                    queue.mark_all_dispatched(uow)
                run_after_changes(uow)
        if not live and not self._subs:
            return True, numbered
        with read_only(self.engine) as reader:
            rows = queue.leased(reader, self.replica, self._configs)
        self._merge(rows)
        return False, numbered

    @contextmanager
    def _writing(self) -> Iterator[Any]:
        """A write transaction that gets SQLite's write lock even beside a busy writer.

        SQLite's busy handler sleeps 1, 2, 5, 10 ... 100 ms between tries; the
        group-commit writer (another thread or process) releases the lock for
        a millisecond or two between batches and takes it again, so a tick waiting
        that way starved: measured 0.9 s p90, 1.7 s max per tick at 200 events/s
        (and latency of seconds).  Here BEGIN IMMEDIATE fails at once
        (busy_timeout=0 on the worker's own connection) and is retried every
        0.5 ms, which catches those gaps.  PostgreSQL needs none of this."""
        if self.engine.dialect.name != "sqlite":
            with unit_of_work(self.engine) as uow:
                yield uow
            return
        if self._write_conn is None:
            self._write_conn = self.engine.raw_connection()
            self._write_conn.cursor().execute("PRAGMA busy_timeout=0")
        deadline = time.monotonic() + 30.0
        while True:
            began = False
            try:
                with unit_of_work(self.engine, conn=self._write_conn) as uow:
                    began = True
                    yield uow
                return
            except sqlite3.OperationalError as exc:
                if began or "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.0005)

    def _close_write_conn(self) -> None:
        if self._write_conn is not None:
            try:  # back to the pool as database.py made it
                self._write_conn.cursor().execute("PRAGMA busy_timeout=30000")
            finally:
                self._write_conn.close()
            self._write_conn = None

    def _buffer(self, numbered: list) -> None:
        """Keep what this replica just numbered in memory (bounded): reading it back
        row by row from SQLite on a busy process costs far more than it should (each
        row step gives up the GIL and waits to get it back)."""
        contexts: dict[str, list] = {}  # one event reaches many subscriptions: parse its context once
        for sub_id, number, _out_id, topic, occurred, ftype, fid, fversion, context in numbered:
            buffer = self._buffers.setdefault(sub_id, {})
            if len(buffer) < BUFFER_EVENTS:
                parsed = contexts.get(context)
                if parsed is None:
                    parsed = contexts[context] = orjson.loads(context)
                buffer[number] = Event(number, occurred, topic, ftype, fid, fversion, parsed)

    def _final_tick(self) -> None:
        outcomes = self._drain()
        if not outcomes and not self._subs:
            return  # nothing to record, no lease held: no write transaction (a quick stop)
        with self._writing() as uow:
            uow.subscription_internal = True
            queue.record(uow, self.replica, outcomes)
            queue.release(uow, self.replica)
            run_after_changes(uow)

    def _drain(self) -> list[queue.Outcome]:
        out = []
        while self._outcomes:
            out.append(self._outcomes.popleft())
        return out

    def _merge(self, rows: list[queue.LeasedSub]) -> None:
        """Fresh database state in, without losing progress a running task has made
        (a task holds the same object, so it is updated in place)."""
        seen = set()
        for row in rows:
            seen.add(row.sub_id)
            mine = self._subs.get(row.sub_id)
            if mine is None:
                self._subs[row.sub_id] = row
                continue
            if mine.version_id != row.version_id:
                # A new version of the Subscription (a client's edit, or our own status
                # change being recorded): its status counts; a new handshake starts afresh.
                if not (row.status == mine.status == "active"):
                    mine.attempts, mine.failing_since_us = row.attempts, row.failing_since_us
                    mine.next_attempt_us = row.next_attempt_us
                mine.status, mine.version_id = row.status, row.version_id
            mine.events_count = max(mine.events_count, row.events_count)
            mine.delivered_through = max(mine.delivered_through, row.delivered_through)
            mine.last_sent_us = max(mine.last_sent_us, row.last_sent_us)
            mine.secret, mine.config, mine.topic = row.secret, row.config, row.topic
        for sub_id in list(self._subs):
            if sub_id not in seen:
                if sub_id in self._tasks:
                    self._subs[sub_id].status = "off"  # switched off or lease lost: its task stops
                else:
                    del self._subs[sub_id]
                    self._buffers.pop(sub_id, None)

    def _dispatch(self, client: _Clients) -> None:
        client.close_unused(set(self._subs))
        now = _now_us()
        for sub in list(self._subs.values()):
            if sub.sub_id not in self._tasks and self._has_work(sub, now):
                task = asyncio.create_task(self._serve(client, sub))
                self._tasks[sub.sub_id] = task

    def _has_work(self, sub: queue.LeasedSub, now: int) -> bool:
        if sub.status == "requested":
            return sub.next_attempt_us <= now
        if sub.status != "active":
            return False
        if sub.events_count > sub.delivered_through:
            return sub.next_attempt_us <= now
        beat = sub.config.heartbeat_seconds
        return bool(beat) and now - sub.last_sent_us >= beat * 1_000_000

    # --- one subscription ---------------------------------------------------------------
    async def _serve(self, client: _Clients, sub: queue.LeasedSub) -> None:
        try:
            while not self._stopping.is_set():
                now = _now_us()
                if not self._has_work(sub, now):
                    break
                if sub.status == "requested":
                    await self._send(client, sub, "handshake", [])
                    break
                if sub.events_count > sub.delivered_through:
                    limit = sub.config.max_count or self.settings.delivery_max_count
                    events, versions = self._from_buffer(sub, sub.delivered_through + 1, limit), {}
                    if not events:
                        events, versions = await self._loop.run_in_executor(
                            self._db, self._load, sub, sub.delivered_through + 1, limit)
                    if not events:  # numbered but not visible yet; the next tick retries
                        break
                    if not await self._send(client, sub, "event-notification", events, versions):
                        break
                    if len(events) < limit:
                        # Caught up: what arrives next goes in the next tick's bundle.  Looping
                        # here would send one tiny request per event (CPU the writer needs).
                        break
                    continue
                await self._send(client, sub, "heartbeat", [])
                break
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery to subscription %s failed unexpectedly", sub.sub_id)
        finally:
            self._tasks.pop(sub.sub_id, None)
            self.wake()

    def _from_buffer(self, sub: queue.LeasedSub, first: int, limit: int) -> list[Event]:
        """Events ``first``... from memory (loop thread only), if they are there."""
        buffer = self._buffers.get(sub.sub_id)
        if not buffer or sub.config.content == "full-resource":
            return []
        for number in [n for n in buffer if n < first]:  # delivered: forget
            del buffer[number]
        events = []
        while len(events) < limit and first + len(events) in buffer:
            events.append(buffer[first + len(events)])
        return events

    def _load(self, sub: queue.LeasedSub, first: int, limit: int) -> tuple[list, dict]:
        with read_only(self.engine) as reader:
            events = load_events(reader, sub.sub_id, first, first + limit - 1, limit)
            versions = load_versions(reader, events) if sub.config.content == "full-resource" else {}
        return events, versions

    async def _send(self, client: _Clients, sub: queue.LeasedSub, kind: str, events: list,
                    versions: dict | None = None) -> bool:
        config = sub.config
        status = "requested" if kind == "handshake" else sub.status
        bundle = notification_bundle(base=self.base_url, sub_id=sub.sub_id, topic_url=topic_url(sub.topic),
                                     status=status, kind=kind, events_since_start=sub.events_count if not events
                                     else events[-1].number, events=events, content=config.content,
                                     versions=versions)
        body = orjson.dumps(bundle)
        headers = {name: value for name, value in config.headers}
        headers.update({"Content-Type": "application/fhir+json", SIGNATURE_HEADER: sign(sub.secret, body),
                        SUBSCRIPTION_HEADER: sub.sub_id})
        timeout = config.timeout_seconds or self.settings.delivery_timeout_seconds
        http_status, error = 0, ""
        started = time.perf_counter()
        async with self._slots:
            try:
                response = await client.of(sub.sub_id).post(config.endpoint, content=body, headers=headers,
                                                            timeout=timeout)
                http_status = response.status_code
                if not 200 <= http_status < 300:
                    error = f"HTTP {http_status}: {response.text[:200]}"
            except httpx.TimeoutException:
                error = f"timed out after {timeout:g} s"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
        latency_ms = (time.perf_counter() - started) * 1000
        ok = not error
        now = _now_us()
        first = events[0].number if events else 0
        last = events[-1].number if events else 0
        change = ""
        if ok:
            self.stats["sent"] += 1
            sub.attempts, sub.failing_since_us, sub.next_attempt_us = 0, 0, 0
            sub.last_sent_us = now
            if events:
                sub.delivered_through = max(sub.delivered_through, last)
            if kind == "handshake":
                sub.status, change = "active", "active"
        else:
            self.stats["failed"] += 1
            if kind == "handshake":
                sub.status, change = "error", "error"
                error = f"handshake failed: {error}"
            elif kind == "event-notification":
                sub.attempts += 1
                sub.failing_since_us = sub.failing_since_us or now
                if now - sub.failing_since_us >= self.settings.delivery_retry_hours * 3_600_000_000:
                    sub.status, change = "error", "error"
                    error = (f"gave up after {sub.attempts} attempts over "
                             f"{self.settings.delivery_retry_hours:g} h: {error}")
                else:
                    sub.next_attempt_us = now + self._backoff_us(sub.attempts)
            else:  # a missed heartbeat is not retried; the next one is due a period later
                sub.last_sent_us = now
        self._outcomes.append(queue.Outcome(
            sub.sub_id, kind, first, last, http_status, latency_ms, ok, error, now, sub.delivered_through,
            sub.attempts, sub.failing_since_us, sub.next_attempt_us, sub.last_sent_us, change))
        return ok

    def _backoff_us(self, attempts: int) -> int:
        base = self.settings.delivery_retry_base_seconds
        delay = min(base * 2 ** (attempts - 1), self.settings.delivery_retry_max_seconds)
        return int(delay * random.uniform(0.8, 1.0) * 1_000_000)


class _Clients:
    """One small httpx client per subscription (loop thread only).

    Why not one shared client: httpx's pool scans every pooled connection on every
    request (expiry checks through anyio's socket attributes), so with 50+ keep-alive
    connections in one pool the scan dominated the worker's CPU (py-spy: ~45 %).
    A subscription has at most one request in flight, so its own pool holds one
    keep-alive connection and the scan is O(1)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.by_sub: dict[str, httpx.AsyncClient] = {}

    def of(self, sub_id: str) -> httpx.AsyncClient:
        client = self.by_sub.get(sub_id)
        if client is None:
            client = self.by_sub[sub_id] = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=2, max_keepalive_connections=1), timeout=self.timeout,
                follow_redirects=False)
        return client

    def close_unused(self, live: set[str]) -> None:
        for sub_id in [s for s in self.by_sub if s not in live]:
            asyncio.ensure_future(self.by_sub.pop(sub_id).aclose())

    async def close_all(self) -> None:
        clients, self.by_sub = list(self.by_sub.values()), {}
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
