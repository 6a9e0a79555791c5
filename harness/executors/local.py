"""The default executor: N worker processes with one torch thread each (faster than N threads on CPU).

`workers: 0` runs cells inline in the calling process (debugging, tiny grids).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor

from harness import hookimpl


class LocalExecutor:
    def __init__(self, *, workers: int, runtime):
        self.runtime = runtime
        self.workers = workers
        self.pool = self._new_pool() if workers > 0 else None

    def _new_pool(self):
        from harness.executors.worker_start import start_worker

        threads = self.runtime.threads or 1
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=start_worker, initargs=(os.getpid(), threads))

    @property
    def capacity(self) -> int:
        return max(1, self.workers)

    def submit(self, cell) -> Future:
        from harness.cells import execute

        if self.pool is None:
            future: Future = Future()
            future.set_result(execute(cell, self.runtime))
            return future
        return self.pool.submit(execute, cell, self.runtime)

    def recover(self) -> None:
        """After a worker died (out of memory, a signal), start a fresh pool for the remaining cells."""
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new_pool()

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


@hookimpl
def register_executors(register):
    register("local", description="Worker processes on this machine (one torch thread each on CPU).",
             factory="harness.executors.local:LocalExecutor", version="1")
