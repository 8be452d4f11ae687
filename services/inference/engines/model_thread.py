"""One dedicated thread per in-process model.

llama.cpp's `Llama` and a torch model are not safe to call from several threads, and OpenMP's
thread count is set per calling thread; so loading, every call and freeing all run, in order, on
one thread of their own, while the event loop stays free for I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class ModelThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._executor is not None

    async def start(self, load: Callable[[], None]) -> None:
        """Start the thread and run `load` on it; a failed load leaves no thread behind."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=self.name)
        try:
            await self.run(load)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError(f"model thread {self.name} is not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def stop(self, release: Callable[[], None] | None = None) -> None:
        """Run `release` after any call still running, then end the thread."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if release is not None:
            await asyncio.get_running_loop().run_in_executor(executor, release)
        executor.shutdown(wait=True)
