"""A wake-up call from the write path to the delivery worker (same process).

The worker polls (``delivery_poll_seconds``); a hook that has just queued work
(a new Subscription) calls ``wake()`` so a handshake need not wait for the next
poll.  Waking early is only an optimisation: the poll finds everything anyway.
"""

from __future__ import annotations

from typing import Callable

_listeners: list[Callable[[], None]] = []


def on_wake(callback: Callable[[], None]) -> None:
    _listeners.append(callback)


def off_wake(callback: Callable[[], None]) -> None:
    if callback in _listeners:
        _listeners.remove(callback)


def wake() -> None:
    for callback in list(_listeners):
        try:
            callback()
        except RuntimeError:  # the worker's loop has closed: nothing to wake
            pass
