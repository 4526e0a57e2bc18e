"""Builds the running gateway: database, mapping engine, writer, FastAPI app, MLLP.

``Runtime`` owns the parts that outlive a request (engine, writer);
``create_app`` builds the HTTP side on top of it; ``serve`` runs HTTP and MLLP in
one event loop and shuts both down gracefully: stop accepting, finish what is in
flight (every ACK owed is sent after its commit), close the database.
"""

from __future__ import annotations

import asyncio
import gc
import contextlib
import logging
import signal
import sys
from contextlib import asynccontextmanager
from typing import AsyncIterator

import uvicorn
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.responses import JSONResponse, Response

from gateway.api import fhir, hl7v2, operations, search_routes
from gateway.api.errors import install_error_handlers
from gateway.ingest.handler import IngestHandler
from gateway.ingest.mllp import MllpServer
from gateway.ingest.processor import MessageProcessor
from gateway.ingest.writer import GroupCommitWriter
from gateway.mapping.engine import MappingEngine
from gateway.notify.process import make_delivery
from gateway.rules.scheduler import RulesScheduler
from gateway.settings import Settings, use_settings
from gateway.store.checkpoint import WalCheckpointer
from gateway.store.database import make_engine, migrate
from gateway.store.reading import read_only

log = logging.getLogger("gateway")


class Runtime:
    """The long-lived parts of one gateway process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        use_settings(settings)  # hooks (rules, markers) read their configuration from here
        self.engine = make_engine(settings.database_url)
        self.mapping = MappingEngine(settings.mappings_dir, settings.default_timezone)
        self.processor = MessageProcessor(self.mapping)
        self.writer = GroupCommitWriter(self.engine, self.processor, batch_max=settings.ingest_batch_max)
        self.checkpointer = WalCheckpointer(self.engine)
        # Background work after commit: subscription delivery, time-based rules (drift).
        self.workers = [make_delivery(self.engine, settings), RulesScheduler(self.engine, settings)]
        self.mllp: MllpServer | None = None
        self._started = False

    def start(self) -> None:
        if not self._started:
            migrate(self.settings.database_url)
            self.writer.start()
            self.checkpointer.start()
            for worker in self.workers:
                worker.start()
            self._started = True

    def stop(self) -> None:
        if self._started:
            for worker in self.workers:
                worker.stop()
            self.writer.stop()
            self.checkpointer.stop()
            self.engine.dispose()
            self._started = False


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    settings = settings or (runtime.settings if runtime else Settings())
    owns_runtime = runtime is None
    runtime = runtime or Runtime(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        try:
            yield
        finally:
            if owns_runtime:
                runtime.stop()

    app = FastAPI(title="FHIR safeguarding gateway", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.engine = runtime.engine
    app.state.writer = runtime.writer
    install_error_handlers(app)
    app.include_router(hl7v2.router)
    app.include_router(operations.router)  # $operations before the generic /fhir/{type} routes
    app.include_router(fhir.router)  # /metadata first: it must not be taken for a type search
    app.include_router(search_routes.router)

    @app.get("/healthz")
    def healthz() -> Response:
        try:
            with read_only(runtime.engine) as uow:
                uow.fetchone("SELECT 1")
        except Exception as exc:  # the database is what we depend on
            return JSONResponse({"status": "unavailable", "database": str(exc)[:200]}, status_code=503)
        return JSONResponse({"status": "ok", "database": runtime.engine.dialect.name,
                             "mllp_connections": runtime.mllp.active_connections if runtime.mllp else 0})

    @app.get("/metrics")
    def metrics(_request: Request) -> Response:
        return Response(generate_latest(_metrics_registry(runtime)), media_type=CONTENT_TYPE_LATEST)

    return app


def _metrics_registry(runtime: Runtime) -> CollectorRegistry:
    """A fresh registry per scrape from the live counters (cheap; no global state)."""
    registry = CollectorRegistry()
    writer = Gauge("gateway_ingest_total", "Messages and batches through the writer", ["kind"], registry=registry)
    for key, value in runtime.writer.stats.items():
        writer.labels(kind=key).set(value)
    if runtime.mllp is not None:
        mllp = Gauge("gateway_mllp", "MLLP listener counters", ["kind"], registry=registry)
        for key, value in runtime.mllp.stats.items():
            mllp.labels(kind=key).set(value)
        mllp.labels(kind="active_connections").set(runtime.mllp.active_connections)
    return registry


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: ``serve`` owns shutdown order."""

    @contextlib.contextmanager
    def capture_signals(self):  # noqa: ANN201 - uvicorn's signature
        yield


class GatewayServer:
    """HTTP (uvicorn) and MLLP in one event loop, with an orderly stop.

    Used by ``gateway serve`` and by the tests, which run it on free ports.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runtime = Runtime(settings)
        self.app = create_app(settings, self.runtime)
        self._server: _Server | None = None
        self._http_task: asyncio.Task | None = None

    @property
    def http_port(self) -> int:
        servers = self._server.servers if self._server else []
        for srv in servers:
            for sock in srv.sockets:
                return sock.getsockname()[1]
        return self.settings.http_port

    @property
    def mllp_port(self) -> int:
        return self.runtime.mllp.port if self.runtime.mllp else self.settings.mllp_port

    async def start(self) -> None:
        settings = self.settings
        self.runtime.start()
        self.runtime.mllp = MllpServer(IngestHandler(self.runtime.writer, settings.mllp_max_message_bytes),
                                       host=settings.host, port=settings.mllp_port,
                                       max_message_bytes=settings.mllp_max_message_bytes,
                                       idle_timeout=settings.mllp_idle_timeout_seconds)
        await self.runtime.mllp.start()
        config = uvicorn.Config(self.app, host=settings.host, port=settings.http_port,
                                log_level=settings.log_level.lower(), lifespan="on",
                                timeout_graceful_shutdown=10, access_log=False)
        self._server = _Server(config)
        self._http_task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._http_task.done():
                await self._http_task  # raises the startup error (port in use ...)
                raise RuntimeError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.02)
        if not settings.public_base_url:  # notifications name this server by its real port
            for worker in self.runtime.workers:
                if hasattr(worker, "base_url"):
                    worker.base_url = f"http://{settings.host}:{self.http_port}/fhir"
        log.info("gateway: FHIR on http://%s:%d/fhir, MLLP on %s:%d, database %s", settings.host,
                 self.http_port, settings.host, self.mllp_port,
                 self.runtime.engine.url.render_as_string(hide_password=True))

    async def stop(self) -> None:
        log.info("gateway: shutting down")
        if self.runtime.mllp is not None:
            await self.runtime.mllp.close(grace=10.0)  # in-flight messages finish and are ACKed
        if self._server is not None:
            self._server.should_exit = True
        if self._http_task is not None:
            with contextlib.suppress(Exception):
                await self._http_task
        self.runtime.stop()  # drain the writer, close the database
        log.info("gateway: stopped")


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then stop gracefully."""
    # The writer thread and the event loop share the GIL.  With the default 5 ms
    # switch interval a socket read waits up to 5 ms behind a busy writer; 0.5 ms
    # keeps ACK latency low (measured in bench/ingest.py).
    sys.setswitchinterval(0.0005)
    # Ingest allocates many short-lived dicts; the default GC thresholds make the
    # collector run every few messages.  Freeze what start-up built and collect
    # less often (measured: map() 323 -> 204 us).
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    server = GatewayServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, server._http_task}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    await server.stop()
