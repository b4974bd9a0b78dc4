"""Runs adaptations (and checkpoint loads) off the request path, in a small pool of processes.

``Adapt`` handlers submit a job and wait for its result; ``Act`` handlers never wait for the pool,
so one client's adaptation does not stall other clients' actions. The number of jobs queued or
running is bounded (``RESOURCE_EXHAUSTED`` past it), and a worker that dies (out of memory, a
signal) is replaced: its callers get ``UNAVAILABLE`` and may retry.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

from metarl_server import worker
from metarl_server.errors import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


class Adapter:
    """A pool of adaptation workers.

    ``processes >= 1`` starts that many spawned processes (the default: torch lives there, not in
    the serving process); ``processes == 0`` runs the jobs in one thread of this process (for
    debugging; the inner loop then shares this process's GIL and memory).
    """

    def __init__(
        self,
        processes: int = 1,
        torch_threads: int = 1,
        max_pending: int = 64,
        warm_up: bool = True,
    ) -> None:
        self.processes = processes
        self.torch_threads = torch_threads
        self.warm_up = warm_up
        self.max_pending = max_pending
        self._slots = threading.BoundedSemaphore(max_pending)
        self._lock = threading.Lock()
        self._pending = 0
        self._closed = False
        self._pool = self._new_pool()

    def _new_pool(self) -> Executor:
        if self.processes <= 0:
            return ThreadPoolExecutor(
                1,
                thread_name_prefix="metarl-adapt",
                initializer=worker.init,
                initargs=(self.torch_threads, self.warm_up),
            )
        return ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=worker.init,
            initargs=(self.torch_threads, self.warm_up, os.getpid()),
        )

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return self._pending

    def start(self, timeout: float = 120.0) -> None:
        """Starts the workers and waits until they are warmed up."""
        self._run(worker.ping, timeout=timeout, bounded=False)

    def load(self, path: Path) -> worker.LoadedCheckpoint:
        """Loads and verifies a checkpoint in a worker; raises ``CheckpointError``."""
        return self._run(worker.load, str(path), timeout=300.0, bounded=False)

    def adapt(self, job: worker.AdaptJob, timeout: float | None) -> worker.AdaptResult:
        """Runs ``job``; raises ``ResourceExhausted`` when ``max_pending`` jobs are already
        queued, ``AdaptationError`` when the data makes the inner loop fail, ``TimeoutError``
        when ``timeout`` passes first."""
        return self._run(worker.adapt, job, timeout=timeout, bounded=True)

    def _run(self, fn: Any, *args: Any, timeout: float | None, bounded: bool) -> Any:
        if bounded and not self._slots.acquire(blocking=False):
            raise ResourceExhausted(
                f"the server is already running its maximum of {self.max_pending} adaptations; "
                "retry shortly"
            )
        with self._lock:
            self._pending += 1
        try:
            future = self._submit(fn, *args)
            try:
                return future.result(timeout)
            except BrokenProcessPool:
                self._replace_pool()
                raise Unavailable(
                    "the adaptation worker stopped unexpectedly (it was replaced); retry"
                ) from None
        finally:
            with self._lock:
                self._pending -= 1
            if bounded:
                self._slots.release()

    def _submit(self, fn: Any, *args: Any) -> Future[Any]:
        pool = self._pool
        if self._closed:
            raise Unavailable("the server is shutting down")
        try:
            return pool.submit(fn, *args)
        except BrokenProcessPool:
            self._replace_pool(pool)
            return self._pool.submit(fn, *args)

    def _replace_pool(self, broken: Executor | None = None) -> None:
        with self._lock:
            if self._closed or (broken is not None and self._pool is not broken):
                return
            old, self._pool = self._pool, self._new_pool()
        log.error("an adaptation worker died; started a new one")
        old.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
