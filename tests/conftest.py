"""Shared fixtures: databases (SQLite and a real PostgreSQL) and a running gateway.

PostgreSQL: ``GATEWAY_TEST_POSTGRES_URL`` (set by .ci/run) names a server whose
superuser may create databases; without it a throwaway cluster is started from the
machine's own binaries.  If neither works the PostgreSQL tests skip with the reason
— unless ``GATEWAY_TEST_REQUIRE_POSTGRES=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from pg_cluster import ThrowawayCluster  # noqa: E402

from gateway.settings import Settings  # noqa: E402

MESSAGES = Path(__file__).parent / "messages"
TEMPLATE_DB = "gateway_test_template"


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    url = os.environ.get("GATEWAY_TEST_POSTGRES_URL")
    cluster = None
    if not url:
        try:
            cluster = ThrowawayCluster()
            url = cluster.start()
        except Exception as exc:  # no binaries, no permission ...
            reason = f"PostgreSQL unavailable: set GATEWAY_TEST_POSTGRES_URL ({exc})"
            if os.environ.get("GATEWAY_TEST_REQUIRE_POSTGRES") == "1":
                pytest.fail(reason)
            pytest.skip(reason)
    _make_template(url)
    yield url
    if cluster is not None:
        cluster.stop()


def _make_template(admin_url: str) -> None:
    """Migrate one template database; each test copies it (fast) instead of migrating."""
    import psycopg

    from gateway.store.database import migrate

    with psycopg.connect(_plain(admin_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
        conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    migrate(_database_url(admin_url, TEMPLATE_DB))


def _database_url(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + name


def _fresh_postgres(admin_url: str) -> Iterator[str]:
    import psycopg

    name = f"gw_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_plain(admin_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
    yield _database_url(admin_url, name)
    with psycopg.connect(_plain(admin_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every test using this runs twice: on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
    else:
        yield from _fresh_postgres(request.getfixturevalue("postgres_admin_url"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"


class RunningGateway:
    """A real gateway (HTTP + MLLP on free ports) in a background event loop."""

    def __init__(self, settings: Settings) -> None:
        from gateway.app import GatewayServer

        self.settings = settings
        self.server = GatewayServer(settings)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> "RunningGateway":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    @property
    def fhir(self) -> str:
        return self.base_url + "/fhir"

    @property
    def mllp_port(self) -> int:
        return self.server.mllp_port

    @property
    def engine(self):  # noqa: ANN201
        return self.server.runtime.engine

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30)


def gateway_settings(database_url: str, **overrides: object) -> Settings:
    # Delivery as a thread: a child process per test gateway costs ~1 s of imports each
    # (tests/test_subscriptions_process.py covers the process; `gateway serve` uses it).
    values = dict(database_url=database_url, host="127.0.0.1", http_port=0, mllp_port=0, log_level="warning",
                  delivery_process=False)
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def gateway(database_url: str) -> Iterator[RunningGateway]:
    running = RunningGateway(gateway_settings(database_url)).start()
    yield running
    running.stop()


@pytest.fixture
def sqlite_gateway(sqlite_url: str) -> Iterator[RunningGateway]:
    running = RunningGateway(gateway_settings(sqlite_url)).start()
    yield running
    running.stop()
