"""Read-only access for the API: a short-lived connection, never a write lock."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from sqlalchemy.engine import Engine

from gateway.store.unit_of_work import UnitOfWork, dialect_of


@contextmanager
def read_only(engine: Engine) -> Iterator[UnitOfWork]:
    raw = engine.raw_connection()
    try:
        yield UnitOfWork(raw, dialect_of(engine))
    finally:
        try:
            raw.rollback()
        finally:
            raw.close()
