"""Runs adaptations off the request path, in a small pool of processes, and checkpoint loads
on a loader of their own (so a slow load never stalls an adaptation).

``Adapt`` handlers send a job to an idle worker over its pipe and read the answer themselves (no
executor threads in between); ``Act`` handlers never wait for the pool,
so one client's adaptation does not stall other clients' actions. The number of jobs queued or
running is bounded (``RESOURCE_EXHAUSTED`` past it), and a worker that dies (out of memory, a
signal) is replaced: its callers get ``UNAVAILABLE`` and may retry.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

from metarl_server import worker
from metarl_server.errors import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
LOAD_TIMEOUT = 300.0
"""Seconds a checkpoint load may take before its loader is stopped (and the load refused)."""
LOADER_IDLE_SECONDS = 30.0
"""Seconds the loader process stays up after a load (model directory scans reuse it)."""


class _Worker:
    """One adaptation process and the pipe to it: the caller's thread sends a call and reads its
    answer itself (a ``ProcessPoolExecutor`` hands each call and each answer across two more
    threads of this process, ~0.5 ms per Adapt when the cores are busy)."""

    def __init__(self, torch_threads: int, warm_up: bool) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=worker.serve,
            args=(child, torch_threads, warm_up, os.getpid()),
            name="metarl-adapt",
            daemon=True,
        )
        self.process.start()
        child.close()

    def call(self, fn: Any, args: tuple[Any, ...], timeout: float | None) -> Any:
        """``fn(*args)`` in the process; ``TimeoutError`` when no answer within ``timeout``
        (the call goes on: read its answer with :meth:`answer` before the next call),
        ``BrokenProcessPool`` when the process died."""
        try:
            self.conn.send((fn, args))
            if not self.conn.poll(timeout):
                raise TimeoutError
        except (EOFError, OSError, BrokenPipeError):
            raise BrokenProcessPool("the adaptation worker died") from None
        return self.answer()

    def answer(self) -> Any:
        try:
            ok, value = self.conn.recv()
        except (EOFError, OSError):
            raise BrokenProcessPool("the adaptation worker died") from None
        if not ok:
            raise value
        return value

    def stop(self, timeout: float) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()  # the worker reads EOF and exits
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


class Cancelled(Exception):
    """The caller of a job went away before the job started: it was not run."""


def _unless_gone(is_active: Callable[[], bool] | None, fn: Any, *args: Any) -> Any:
    if is_active is not None and not is_active():
        raise Cancelled("the call ended while its adaptation waited for a worker")
    return fn(*args)


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
        self._thread_pool: ThreadPoolExecutor | None = None
        self._workers: list[_Worker] = []
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._load_lock = threading.Lock()
        self._loader: _Worker | None = None
        self._load_pool: ThreadPoolExecutor | None = None
        self._load_timer: threading.Timer | None = None
        if processes <= 0:
            self._thread_pool = ThreadPoolExecutor(
                1,
                thread_name_prefix="metarl-adapt",
                initializer=worker.init,
                initargs=(self.torch_threads, self.warm_up),
            )

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return self._pending

    @property
    def worker_pids(self) -> list[int]:
        """The adaptation processes' ids (none before the first job or ``start``)."""
        with self._lock:
            return [w.process.pid for w in self._workers if w.process.pid is not None]

    def start(self, timeout: float = 120.0) -> None:
        """Starts the workers (and the loader, for the first checkpoints: its start overlaps
        theirs) and waits until the workers are warmed up."""
        if self.processes > 0:
            with self._load_lock:
                self._loader_process()
        self._run(worker.ping, timeout=timeout, bounded=False)

    def load(self, path: Path) -> worker.LoadedCheckpoint:
        """Loads and verifies a checkpoint; raises ``CheckpointError``. On a loader of its own
        (:meth:`call_loader`), never on the workers Adapt calls wait for."""
        return self.call_loader(worker.load, str(path), timeout=LOAD_TIMEOUT)

    def call_loader(self, fn: Any, *args: Any, timeout: float | None = LOAD_TIMEOUT) -> Any:
        """``fn(*args)`` on the loader: a process of its own (a thread of its own with
        ``processes == 0``), started on first use and stopped after :data:`LOADER_IDLE_SECONDS`
        without a load, so a slow load (a huge file, a slow disk) never stalls an adaptation.
        One load at a time."""
        with self._load_lock:
            if self._closed:
                raise Unavailable("the server is shutting down")
            if self._load_timer is not None:
                self._load_timer.cancel()
            try:
                if self._thread_pool is not None:
                    if self._load_pool is None:
                        self._load_pool = ThreadPoolExecutor(1, thread_name_prefix="metarl-load")
                    return self._load_pool.submit(fn, *args).result(timeout)
                loader = self._loader_process()
                try:
                    return loader.call(fn, args, timeout)
                except (TimeoutError, BrokenProcessPool):
                    self._loader = None
                    loader.stop(0)
                    raise
            finally:
                if self._loader is not None:
                    self._load_timer = threading.Timer(LOADER_IDLE_SECONDS, self._stop_idle_loader)
                    self._load_timer.daemon = True
                    self._load_timer.start()

    def _loader_process(self) -> _Worker:
        """The loader process (the caller holds ``_load_lock``), started if need be."""
        if self._loader is None or not self._loader.process.is_alive():
            self._loader = _Worker(self.torch_threads, warm_up=False)
        return self._loader

    def _stop_idle_loader(self) -> None:
        if not self._load_lock.acquire(blocking=False):
            return  # a load is running: the timer is set again after it
        try:
            loader, self._loader = self._loader, None
        finally:
            self._load_lock.release()
        if loader is not None:
            loader.stop(10)

    def adapt(
        self,
        job: worker.AdaptJob,
        timeout: float | None,
        is_active: Callable[[], bool] | None = None,
    ) -> worker.AdaptResult:
        """Runs ``job``; raises ``ResourceExhausted`` when ``max_pending`` jobs are already
        queued, ``AdaptationError`` when the data makes the inner loop fail, ``TimeoutError``
        when ``timeout`` passes first, ``Cancelled`` when ``is_active()`` (the caller is still
        there) is false once the job's turn comes: nobody would read its answer, so it is
        not computed."""
        return self._run(worker.adapt, job, timeout=timeout, bounded=True, is_active=is_active)

    def _run(
        self,
        fn: Any,
        *args: Any,
        timeout: float | None,
        bounded: bool,
        is_active: Callable[[], bool] | None = None,
    ) -> Any:
        if bounded and not self._slots.acquire(blocking=False):
            raise ResourceExhausted(
                f"the server is already running its maximum of {self.max_pending} adaptations; "
                "retry shortly"
            )
        with self._lock:
            self._pending += 1
        try:
            if self._thread_pool is not None:
                return self._thread_pool.submit(_unless_gone, is_active, fn, *args).result(timeout)
            return self._run_in_process(fn, args, timeout, is_active)
        finally:
            with self._lock:
                self._pending -= 1
            if bounded:
                self._slots.release()

    def _run_in_process(
        self,
        fn: Any,
        args: tuple[Any, ...],
        timeout: float | None,
        is_active: Callable[[], bool] | None,
    ) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        w = self._take(deadline)
        if is_active is not None and not is_active():
            self._idle.put(w)
            raise Cancelled("the call ended while its adaptation waited for a worker")
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            result = w.call(fn, args, left)
        except TimeoutError:
            # the job goes on: the worker is idle again once its answer has been read
            threading.Thread(target=self._drain, args=(w,), daemon=True).start()
            raise
        except BrokenProcessPool:
            self._replace(w)
            raise Unavailable(
                "the adaptation worker stopped unexpectedly (it was replaced); retry"
            ) from None
        except BaseException:
            self._idle.put(w)  # (the job's own error: the worker is fine)
            raise
        self._idle.put(w)
        return result

    def _take(self, deadline: float | None) -> _Worker:
        """An idle worker (starting the workers on first use), waiting for one up to
        ``deadline``."""
        with self._lock:
            if self._closed:
                raise Unavailable("the server is shutting down")
            while len(self._workers) < self.processes:
                w = _Worker(self.torch_threads, self.warm_up)
                self._workers.append(w)
                self._idle.put(w)
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            return self._idle.get(timeout=left)
        except queue.Empty:
            raise TimeoutError from None

    def _drain(self, w: _Worker) -> None:
        try:
            w.answer()
        except BrokenProcessPool:
            self._replace(w)
            return
        except BaseException:
            pass
        self._idle.put(w)

    def _replace(self, dead: _Worker) -> None:
        with self._lock:
            if dead in self._workers:
                self._workers.remove(dead)
            closed = self._closed
        dead.stop(0)
        if not closed:
            log.error("an adaptation worker died; starting a new one")
            with self._lock:
                w = _Worker(self.torch_threads, self.warm_up)
                self._workers.append(w)
            self._idle.put(w)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, []
        with self._load_lock:
            if self._load_timer is not None:
                self._load_timer.cancel()
            loader, self._loader = self._loader, None
            if self._load_pool is not None:
                self._load_pool.shutdown(wait=False, cancel_futures=True)
        if loader is not None:
            workers.append(loader)
        if self._thread_pool is not None:
            self._thread_pool.shutdown(wait=True, cancel_futures=True)
        for w in workers:
            w.stop(10)
