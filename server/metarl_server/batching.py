"""Batches concurrent ``Act`` calls into one forward pass over stacked per-session parameters.

No timer: the first call that finds the batcher idle computes at once (a lone request is never
delayed). Calls arriving while a forward pass runs queue up; when the pass ends, its leader hands
the queue to one of the waiting threads, which computes all of them in one pass (``baddbmm``-like
batched matmuls over the sessions' stacked parameters) and wakes the others. So the wait of a
batched call is bounded by one forward pass, and under load batches grow by themselves.

Forward passes and sampling are serialized here, which also makes each session's generator
single-threaded.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from metarl_server.errors import DataLoss, FailedPrecondition, InvalidArgument, ServiceError
from metarl_server.numpy_policy import ParamSet
from metarl_server.registry import PolicyVersion
from metarl_server.validation import all_finite

STACK_MAX_ROWS = 16
"""Calls with more observations than this run on their own (padding would waste work)."""


@dataclass(eq=False, slots=True)
class ActJob:
    policy: PolicyVersion
    params: ParamSet
    obs: NDArray[np.float32]
    deterministic: bool
    rng: np.random.Generator
    actions: NDArray[Any] | None = None
    log_probs: NDArray[np.float32] | None = None
    action: int | list[float] | None = None
    """For a one-observation job computed alone: its action in Python numbers (an index from 0,
    or the components) and its log-probability (see ``NumpyPolicy.act_one``)."""
    log_prob: float = 0.0
    error: Exception | None = None
    event: threading.Event | None = field(default=None, repr=False)

    def result(self) -> tuple[NDArray[Any], NDArray[np.float32]]:
        """Actions ``[N, ...]`` (int64 indices or float32 rows) and log-probabilities ``[N]``."""
        if self.action is not None:
            dtype = np.int64 if isinstance(self.action, int) else np.float32
            return np.array([self.action], dtype), np.array([self.log_prob], np.float32)
        assert self.actions is not None and self.log_probs is not None
        return self.actions, self.log_probs

    def result_one(self) -> tuple[int | list[float], float]:
        """The action of a one-observation job in Python numbers (an index from 0, or the
        components) and its log-probability."""
        if self.action is not None:
            return self.action, self.log_prob
        assert self.actions is not None and self.log_probs is not None
        return self.actions[0].tolist(), float(self.log_probs[0])

    handoff: list[ActJob] | None = field(default=None, repr=False)
    """Set when this job's thread becomes the leader: the batch it must compute."""


class ActBatcher:
    def __init__(
        self,
        max_batch: int = 64,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        """``max_batch``: most calls per forward pass. ``on_batch(calls, sessions)`` hears of
        every pass (metrics)."""
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._lock = threading.Lock()
        self._queue: list[ActJob] = []
        self._busy = False

    def run(self, job: ActJob) -> ActJob:
        """Computes ``job`` (alone or batched with concurrent jobs): sets its ``actions`` and
        ``log_probs``, or, for one observation computed alone, ``action`` and ``log_prob``
        (see :meth:`ActJob.result_one`)."""
        if self.max_batch <= 1:  # batching off: every call computes in its own thread
            _compute_one(job)
            if job.error is not None:
                raise job.error
            return job
        with self._lock:
            if self._busy:
                job.event = threading.Event()
                self._queue.append(job)
                batch = None
            else:
                self._busy = True
                batch = [job]
        if batch is None:
            assert job.event is not None
            job.event.wait()
            batch = job.handoff
        if batch is not None:  # this thread leads: compute, then hand over what queued meanwhile
            if len(batch) == 1:  # (the usual case, made short)
                try:
                    _compute_one(job)
                except Exception as exc:
                    job.error = exc
                if self.on_batch is not None:
                    self.on_batch(1, 1)
            else:
                self._compute(batch)
            self._hand_over()
        if job.error is not None:
            raise job.error
        return job

    def _hand_over(self) -> None:
        with self._lock:
            if not self._queue:
                self._busy = False
                return
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
        leader = batch[0]
        leader.handoff = batch
        assert leader.event is not None
        leader.event.set()

    def _compute(self, batch: list[ActJob]) -> None:
        try:
            if len(batch) == 1:
                _compute_one(batch[0])
                sessions = 1
            else:
                sessions = self._compute_many(batch)
            if self.on_batch is not None:
                self.on_batch(len(batch), sessions)
        except Exception as exc:  # never leave a waiting thread without an answer
            for job in batch:
                if job.actions is None and job.action is None and job.error is None:
                    job.error = exc
        finally:
            for job in batch[1:]:
                if job.event is not None:
                    job.event.set()

    @staticmethod
    def _compute_many(batch: list[ActJob]) -> int:
        groups: dict[int, list[ActJob]] = {}
        sessions = 0
        for job in batch:
            if job.obs.shape[0] > STACK_MAX_ROWS:
                _compute_one(job)
                sessions += 1
            else:
                groups.setdefault(id(job.policy), []).append(job)
        for jobs in groups.values():
            sessions += _compute_group(jobs)
        return sessions


def _not_finite(job: ActJob) -> ServiceError:
    """The policy's output is not finite: the observations' fault, unless the parameters
    themselves hold NaN or infinity (checked only here, on the failure path)."""
    if not all_finite(job.params.flat):
        return DataLoss(
            "the session's parameters hold NaN or infinity (its stored state is corrupt): "
            "reset the session (ResetSession) or create a new one"
        )
    return InvalidArgument(
        "the policy's output for these observations is not finite: the observations are far "
        "outside the range the policy was trained on"
    )


def _bad_parameters(job: ActJob) -> ServiceError:
    if not all_finite(job.params.flat):
        return _not_finite(job)  # (DATA_LOSS)
    return FailedPrecondition(
        "the session's parameters give non-finite actions or log-probabilities (an extreme "
        "standard deviation): reset the session (ResetSession) or create a new one"
    )


def _finish(job: ActJob, out: NDArray[np.float32]) -> None:
    if not all_finite(out):
        job.error = _not_finite(job)
        return
    actions, logps = job.policy.policy.act(job.params, out, job.deterministic, job.rng)
    if not (all_finite(logps) and (actions.dtype.kind != "f" or all_finite(actions))):
        job.error = _bad_parameters(job)
        return
    job.actions, job.log_probs = actions, logps


def _compute_one(job: ActJob) -> None:
    policy = job.policy.policy
    if job.obs.shape[0] != 1:
        with np.errstate(all="ignore"):
            _finish(job, policy.forward(job.params, job.obs))
        return
    out = policy.forward_one(job.params, job.obs[0]).tolist()
    if not all(map(math.isfinite, out)):
        job.error = _not_finite(job)
        return
    action, logp = policy.act_one(job.params, out, job.deterministic, job.rng)
    if not (math.isfinite(logp) and (isinstance(action, int) or all(map(math.isfinite, action)))):
        job.error = _bad_parameters(job)
        return
    job.action, job.log_prob = action, logp


def _compute_group(jobs: list[ActJob]) -> int:
    """One forward pass for jobs on the same policy version; returns the distinct parameter
    sets (sessions that have not adapted share the version's θ and are simply concatenated)."""
    policy = jobs[0].policy.policy
    distinct: dict[int, ParamSet] = {}
    for job in jobs:
        distinct.setdefault(id(job.params), job.params)
    with np.errstate(all="ignore"):
        if len(distinct) == 1:
            out = policy.forward(jobs[0].params, np.concatenate([j.obs for j in jobs]))
            start = 0
            for job in jobs:
                n = job.obs.shape[0]
                _finish(job, out[start : start + n])
                start += n
            return 1
        rows = max(j.obs.shape[0] for j in jobs)
        obs = np.zeros((len(jobs), rows, jobs[0].obs.shape[1]), np.float32)
        for i, job in enumerate(jobs):
            obs[i, : job.obs.shape[0]] = job.obs
        outs = policy.forward_stacked(np.stack([j.params.flat for j in jobs]), obs)
        for i, job in enumerate(jobs):
            _finish(job, outs[i, : job.obs.shape[0]])
    return len(distinct)
