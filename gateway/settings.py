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

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
