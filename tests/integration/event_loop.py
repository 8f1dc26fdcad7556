"""An asyncio event loop in a thread of its own, for tests that drive the extender's coroutines
(binds, informers) from plain test code, as the extender's server does on its loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="test-event-loop")
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        """Run a coroutine on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Call a plain function on the loop's thread (where a running loop is found), wait for it."""

        async def call() -> T:
            return fn(*args)

        return self.run(call())

    def start(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        """Start a coroutine on the loop in the background; cancel the returned future to stop it."""
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop), loop=self.loop)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()
