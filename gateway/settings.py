"""Settings: flags on ``gateway serve`` and ``GATEWAY_*`` environment variables.

One pydantic-settings model so every entry point (CLI, tests, app factory) reads
configuration the same way.  CLI flags win over environment variables.
"""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    http_port: int = 8080
    mllp_port: int = 2575
    database_url: str = "sqlite:///./gateway.db"

    # Where mapping data lives (mappings/*.yaml, codes/*.csv, senders/*.yaml).
    mappings_dir: Path = REPO_ROOT / "mappings"
    # Zone for HL7 timestamps that carry no UTC offset.
    default_timezone: str = "Europe/London"
    # Base URL used in Bundle links and Location headers; derived from the request when empty.
    public_base_url: str = ""

    # MLLP listener.
    mllp_max_message_bytes: int = 1024 * 1024
    mllp_idle_timeout_seconds: float = 300.0
    # Group commit: at most this many messages share one database transaction.
    ingest_batch_max: int = 64

    log_level: str = "info"

    # Safeguarding rules (gateway/rules/): the versioned rules file, a switch for
    # the event-driven rules, and how often the scheduler runs the time-based ones.
    rules_file: Path = REPO_ROOT / "profiles" / "safeguarding-rules.yaml"
    rules_enabled: bool = True
    rules_interval_seconds: float = 60.0
    # Child markers (gprecords/markers.py): SNOMED CT code lists for complex needs etc.
    complex_needs_file: Path = REPO_ROOT / "mappings" / "complex-needs.yaml"

    # Subscription delivery (gateway/notify/): retry for this long before a
    # subscription goes to 'error'; how often the worker looks for new events.
    delivery_enabled: bool = True
    delivery_retry_hours: float = 24.0
    delivery_poll_seconds: float = 0.05
    # Backoff between attempts: base * 2**(n-1), capped at max (seconds); per-request
    # timeout when a Subscription sets no backport-timeout; most concurrent deliveries
    # (one per subscription, so a dead endpoint holds one slot, never the others);
    # events per notification when a Subscription sets no backport-max-count; how long
    # a replica's claim on a subscription lasts without renewal (multi-replica PostgreSQL).
    delivery_retry_base_seconds: float = 1.0
    delivery_retry_max_seconds: float = 300.0
    delivery_timeout_seconds: float = 10.0
    delivery_concurrency: int = 64
    delivery_max_count: int = 20
    delivery_lease_seconds: float = 30.0
    # Run delivery in its own OS process (notify/process.py): it then never competes with
    # ingest for the interpreter lock.  False: a thread in this process (the test fixtures).
    delivery_process: bool = True

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


_current: Settings | None = None


def use_settings(settings: Settings) -> None:
    """Make these the process's settings for code with no request or runtime at hand
    (write hooks: rules, markers).  Runtime and the CLI call it at start."""
    global _current
    _current = settings


def current_settings() -> Settings:
    global _current
    if _current is None:
        _current = Settings()
    return _current
