"""Run a function on another thread's asyncio loop and wait for its result: how the rigs (which own a loop thread)
serve calls from tests and runners on other threads."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def call_on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], T], timeout_s: float) -> T:
    """``fn()`` run on ``loop`` (scheduled thread-safely); its result or its exception. TimeoutError after
    ``timeout_s`` (a hung loop fails the caller, never hangs it). Never call it from ``loop``'s own thread."""
    fut: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            fut.set_result(fn())
        except BaseException as e:  # handed to the caller
            fut.set_exception(e)

    loop.call_soon_threadsafe(run)
    return fut.result(timeout_s)
