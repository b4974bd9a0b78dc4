"""The PolicyService implementation.

``Act`` and ``StreamAct`` compute in this process, in numpy, through the :class:`ActBatcher`;
``Adapt`` hands its job to the :class:`Adapter` (another process by default) and swaps the
session's parameters when the result comes back. Every failure a request can cause maps to a
precise status code with a message that says what was wrong; only a bug gives INTERNAL.
"""

from __future__ import annotations

import functools
import logging
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import gymnasium as gym
import numpy as np

from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.proto.metarl.v1 import policy_service_pb2_grpc as pb_grpc
from metarl_client.proto.metarl.v1 import tensor_pb2
from metarl_client.tensors import to_tensor
from metarl_server import validation
from metarl_server.adapter import Adapter, Cancelled
from metarl_server.batching import ActBatcher, ActJob
from metarl_server.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
)
from metarl_server.interceptors import CLIENT
from metarl_server.metrics import Metrics
from metarl_server.registry import PolicyRegistry, PolicyVersion
from metarl_server.sessions import Adaptation, RecordedEpisode, Session, SessionStore, log_id
from metarl_server.worker import AdaptationError, AdaptJob

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Limits:
    max_batch_size: int = 1024
    """Most observations per Act call."""
    max_adapt_steps: int = 10
    """Most inner steps per Adapt call."""
    max_transitions: int = 100_000
    """Most transitions per Adapt call."""


def _status_on_error(method: F) -> F:
    """Maps domain errors to their status codes; anything else is a bug: logged, INTERNAL."""

    @functools.wraps(method)
    def wrapper(self: PolicyService, request: Any, context: Any) -> Any:
        try:
            return method(self, request, context)
        except ServiceError as exc:
            context.abort(exc.code, str(exc))
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error (logged on the server)")

    return wrapper  # type: ignore[return-value]


_ENCODABLE = {np.dtype("<f4"): 1, np.dtype("<i8"): 4} if sys.byteorder == "little" else {}


def encode(arr: np.ndarray, into: tensor_pb2.Tensor | None = None) -> tensor_pb2.Tensor:
    """``to_tensor`` for the float32 and int64 arrays the server answers with, written into the
    response's own field when given (building a Tensor and copying it in costs twice as much)."""
    code = _ENCODABLE.get(arr.dtype)
    out = tensor_pb2.Tensor() if into is None else into
    if code is None:
        out.CopyFrom(to_tensor(arr))
        return out
    out.dtype = code  # type: ignore[assignment]
    if arr.ndim:
        out.shape[:] = arr.shape
    out.data = arr.tobytes()
    return out


_F32 = [struct.Struct(f"<{n}f") for n in range(17)]


def _pack_f32(values: list[float]) -> bytes:
    """Python numbers as little-endian float32 bytes (``FailedPrecondition`` past float32's
    range)."""
    try:
        if len(values) < len(_F32):
            return _F32[len(values)].pack(*values)
        return struct.pack(f"<{len(values)}f", *values)
    except OverflowError:  # finite, but past float32's range: never answered as infinity
        raise FailedPrecondition(
            "the session's policy gives an action beyond float32's range: reset the session "
            "(ResetSession) or create a new one"
        ) from None


def encode_action(pv: PolicyVersion, action: int | list[float], into: tensor_pb2.Tensor) -> None:
    """A one-observation action (``ActJob.result_one``'s Python numbers) into ``into``, in the
    action space's terms; without numpy (a handful of numpy calls would cost more than the
    forward pass's share)."""
    if isinstance(action, int):
        into.dtype = tensor_pb2.DTYPE_INT64
        into.data = _I64.pack(action + pv.action_start)
        return
    into.dtype = tensor_pb2.DTYPE_FLOAT32
    into.shape[:] = pv.action_space.shape or ()
    into.data = _pack_f32(action)


def encode_scalar(value: float, into: tensor_pb2.Tensor) -> None:
    """A float32 scalar (shape ``[]``) into ``into``."""
    into.dtype = tensor_pb2.DTYPE_FLOAT32
    into.data = _pack_f32([value])


_I64 = struct.Struct("<q")


def _space_proto(space: gym.spaces.Space[Any]) -> pb.Space:
    if isinstance(space, gym.spaces.Discrete):
        return pb.Space(discrete=pb.DiscreteSpace(n=int(space.n), start=int(space.start)))
    assert isinstance(space, gym.spaces.Box)
    return pb.Space(
        box=pb.BoxSpace(
            shape=list(space.shape),
            low=space.low.ravel().tolist(),
            high=space.high.ravel().tolist(),
            dtype=to_tensor(np.zeros(0, space.dtype)).dtype,
        )
    )


class PolicyService(pb_grpc.PolicyServiceServicer):
    def __init__(
        self,
        registry: PolicyRegistry,
        sessions: SessionStore,
        limits: Limits,
        adapter: Adapter,
        metrics: Metrics | None = None,
        max_batch_calls: int = 64,
    ) -> None:
        self.registry = registry
        self.sessions = sessions
        self.limits = limits
        self.adapter = adapter
        self.metrics = metrics or Metrics()
        self.batcher = ActBatcher(max_batch_calls, on_batch=self.metrics.observe_batch)

    # -- helpers -------------------------------------------------------------------------------

    def _session(self, session_id: str) -> Session:
        """The live session ``session_id``, if the calling client may use it: a session
        created by a named client (see ``--auth-token-file``) is that client's alone, and to
        any other it is NOT_FOUND exactly as an id that does not exist (a prober cannot tell
        that the id is a session's). The refusal is logged, without the id or a token."""
        s = self.sessions.get(session_id)
        if s.owner is not None and s.owner != CLIENT.get():
            caller = CLIENT.get()
            log.warning(
                "refused session %s to %s: it belongs to another client (answered NOT_FOUND)",
                log_id(s.id),
                f"client {caller!r}" if caller is not None else "an unnamed token",
                extra={"session": log_id(s.id)},
            )
            raise self.sessions.unknown(session_id)
        return s

    def _session_proto(self, s: Session) -> pb.Session:
        msg = pb.Session(
            id=s.id,
            policy=s.policy.name,
            version=s.policy.version,
            adaptation_steps=s.adaptation_steps,
            adaptations=s.adaptations,
            recording=s.recording is not None,
            recorded_transitions=s.recording.transitions if s.recording else 0,
        )
        msg.create_time.FromNanoseconds(int(s.created_at * 1e9))
        msg.expire_time.FromNanoseconds(int(s.expires_at * 1e9))
        return msg

    def _act(
        self, s: Session, obs: np.ndarray, deterministic: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Actions ``[N, ...]`` (in the action space's terms) and log-probabilities ``[N]``."""
        # One read of s.param_set: an Adapt swapping it mid-call cannot mix old and new.
        job = self.batcher.run(ActJob(s.policy, s.param_set, obs, deterministic, s.rng))
        acts, logp = job.result()
        space = s.policy.action_space
        if isinstance(space, gym.spaces.Discrete):
            return acts + int(space.start), logp
        return acts.reshape(-1, *space.shape), logp  # type: ignore[misc]

    def _act_one(
        self, s: Session, obs: np.ndarray, deterministic: bool
    ) -> tuple[int | list[float], float]:
        """:meth:`_act` for one observation ``[1, obs_dim]``: the action in Python numbers (an
        index from 0, or the components; see :func:`encode_action`) and its log-probability."""
        job = self.batcher.run(ActJob(s.policy, s.param_set, obs, deterministic, s.rng))
        return job.result_one()

    def _record(
        self,
        s: Session,
        feedback: pb.StepFeedback | None,
        obs: np.ndarray | None,
        action: int | list[float] | None,
    ) -> None:
        if s.recording is None:
            return
        with s.lock:
            if feedback is not None:
                s.recording.feedback(feedback.reward, feedback.terminated, feedback.truncated)
            if obs is not None and action is not None:
                pv = s.policy
                s.recording.step(
                    obs[0],
                    np.array(action + pv.action_start, np.int64)
                    if isinstance(action, int)
                    else np.array(action, np.float32).reshape(pv.action_space.shape),
                )
        self.sessions.save_recording(s)  # (a shared store appends the new steps)

    # -- RPCs ----------------------------------------------------------------------------------

    @_status_on_error
    def ListPolicies(
        self, request: pb.ListPoliciesRequest, context: Any
    ) -> pb.ListPoliciesResponse:
        out = []
        for versions in self.registry.list():
            latest: PolicyVersion = versions[-1]
            il = latest.inner_loop
            out.append(
                pb.Policy(
                    name=latest.name,
                    versions=[v.version for v in versions],
                    latest_version=latest.version,
                    env_id=latest.checkpoint.env_id,
                    observation_space=_space_proto(latest.observation_space),
                    action_space=_space_proto(latest.action_space),
                    inner_loop=pb.InnerLoopSettings(
                        learning_rate=il.lr,
                        default_steps=il.steps,
                        max_steps=self.limits.max_adapt_steps,
                        discount=il.discount,
                        gae_lambda=il.gae_lambda,
                        normalize_advantages=il.normalize_advantages,
                        max_transitions=self.limits.max_transitions,
                        learned_learning_rates=latest.checkpoint.learning_rates is not None,
                        loss_weighting=pb.LOSS_WEIGHTING_EPISODE
                        if il.loss_weighting == "episode"
                        else pb.LOSS_WEIGHTING_STEP,
                        later_steps_learning_rate_scale=il.later_steps_lr_scale,
                    ),
                    max_batch_size=self.limits.max_batch_size,
                )
            )
        return pb.ListPoliciesResponse(policies=out)

    @_status_on_error
    def CreateSession(
        self, request: pb.CreateSessionRequest, context: Any
    ) -> pb.CreateSessionResponse:
        pv = self.registry.acquire(request.policy, request.version)
        seed = request.seed if request.HasField("seed") else None
        try:
            s = self.sessions.create(pv, seed, request.record)
        except BaseException:
            self.registry.release(pv)
            raise
        owner = CLIENT.get()
        if owner is not None:
            s.owner = owner
            self.sessions.save(s)
        self.metrics.sessions_created.inc()
        log.info(
            "session %s created on %s",
            log_id(s.id),
            pv.key,
            extra={"session": log_id(s.id), "policy": pv.name, "version": pv.version},
        )
        return pb.CreateSessionResponse(session=self._session_proto(s))

    @_status_on_error
    def GetSession(self, request: pb.GetSessionRequest, context: Any) -> pb.GetSessionResponse:
        return pb.GetSessionResponse(session=self._session_proto(self._session(request.session_id)))

    @_status_on_error
    def ResetSession(
        self, request: pb.ResetSessionRequest, context: Any
    ) -> pb.ResetSessionResponse:
        s = self._session(request.session_id)
        with s.lock:
            s.param_set = s.policy.param_set
            s.adaptation_steps = s.adaptations = 0
            s.generation += 1
            if s.recording is not None:
                s.recording = type(s.recording)(s.recording.max_transitions)
        self.sessions.save(s)
        return pb.ResetSessionResponse(session=self._session_proto(s))

    @_status_on_error
    def DeleteSession(
        self, request: pb.DeleteSessionRequest, context: Any
    ) -> pb.DeleteSessionResponse:
        self._session(request.session_id)  # NOT_FOUND, also for another client's
        self.sessions.delete(request.session_id)
        return pb.DeleteSessionResponse()

    @_status_on_error
    def Act(self, request: pb.ActRequest, context: Any) -> pb.ActResponse:
        s = self._session(request.session_id)
        obs, single = validation.observations(
            request.observations, s.policy, self.limits.max_batch_size
        )
        feedback = validation.feedback(request.feedback) if request.HasField("feedback") else None
        if feedback is not None and not single:
            raise InvalidArgument("feedback goes with single-observation Act calls only")
        resp = pb.ActResponse()
        if single:
            action, logp = self._act_one(s, obs, request.deterministic)
            self._record(s, feedback, obs, action)
            encode_action(s.policy, action, resp.actions)
            encode_scalar(logp, resp.log_probs)
            return resp
        acts, logps = self._act(s, obs, request.deterministic)
        encode(acts, resp.actions)
        encode(logps, resp.log_probs)
        return resp

    def StreamAct(
        self, request_iterator: Iterator[pb.StreamActRequest], context: Any
    ) -> Iterator[pb.StreamActResponse]:
        session: Session | None = None
        steps = self.metrics.stream_steps
        try:
            for req in request_iterator:
                if session is None:
                    if not req.session_id:
                        raise InvalidArgument("the first StreamAct message must name session_id")
                    session = self._session(req.session_id)
                else:
                    if req.session_id and req.session_id != session.id:
                        raise InvalidArgument(
                            "a StreamAct stream serves one session: open another stream for "
                            "another session"
                        )
                    session = self.sessions.get(session.id)  # still alive, and keeps it so
                feedback = validation.feedback(req.feedback) if req.HasField("feedback") else None
                if not req.HasField("observation"):
                    self._record(session, feedback, None, None)
                    continue
                obs, single = validation.observations(
                    req.observation, session.policy, self.limits.max_batch_size, "observation"
                )
                if not single:
                    raise InvalidArgument(
                        "StreamAct takes one observation per message, shape "
                        f"{list(session.policy.observation_space.shape)}"
                    )
                action, logp = self._act_one(session, obs, req.deterministic)
                self._record(session, feedback, obs, action)
                resp = pb.StreamActResponse(log_prob=logp)
                encode_action(session.policy, action, resp.action)
                steps.inc()
                yield resp
        except ServiceError as exc:
            context.abort(exc.code, str(exc))
        except grpc.RpcError:
            return  # the call is over (the client went away, or an idle stream was closed)
        except Exception:
            log.exception("unexpected error in StreamAct")
            context.abort(grpc.StatusCode.INTERNAL, "internal error (logged on the server)")

    @_status_on_error
    def ReportFeedback(
        self, request: pb.ReportFeedbackRequest, context: Any
    ) -> pb.ReportFeedbackResponse:
        s = self._session(request.session_id)
        if s.recording is None:
            raise FailedPrecondition("the session does not record: create it with record=true")
        if not request.HasField("feedback"):
            raise InvalidArgument("feedback is required: the reward and done flags of the step")
        self._record(s, validation.feedback(request.feedback), None, None)
        return pb.ReportFeedbackResponse(session=self._session_proto(s))

    @_status_on_error
    def Adapt(self, request: pb.AdaptRequest, context: Any) -> pb.AdaptResponse:
        start = time.perf_counter()
        s = self._session(request.session_id)
        pv = s.policy
        steps = request.steps if request.HasField("steps") else pv.inner_loop.steps
        if not 1 <= steps <= self.limits.max_adapt_steps:
            raise InvalidArgument(
                f"steps must be between 1 and {self.limits.max_adapt_steps}, got {steps}"
            )
        recorded: list[RecordedEpisode] = []
        rate = None
        if request.episodes:
            eps = validation.episodes(list(request.episodes), pv, self.limits.max_transitions)
            validation.check_padded(eps, self.limits.max_transitions)
            rate = validation.success_rate(list(request.episodes))
        else:
            eps, recorded = self._recorded_episodes(s)
        with s.lock:
            if s.adapting:
                self.metrics.adaptations.labels("busy").inc()
                raise Aborted(
                    "another Adapt on this session is still running: wait for its answer, then "
                    "retry"
                )
            s.adapting = True
            params, generation, done = s.params, s.generation, s.adaptation_steps
        claim = None
        try:
            try:  # every replica's Adapts (a shared store): one at a time per session
                claim = self.sessions.claim_adaptation(s)
            except Aborted:
                self.metrics.adaptations.labels("busy").inc()
                raise
            result = self._run_adaptation(pv, params, eps, steps, done, context)
            new_params = pv.policy.params(result.params)

            def still_wanted() -> None:  # (called with s.lock held)
                if s.generation != generation:
                    raise Aborted(
                        "the session was reset while adapting; its parameters were not changed"
                    )
                if not context.is_active():
                    self.metrics.adaptations.labels("cancelled").inc()
                    raise Aborted("the call ended before the adaptation finished; not applied")

            # Applied and persisted all or nothing: an error answer means no change.
            self.sessions.commit_adaptation(
                s, claim, Adaptation(new_params, steps, recorded), still_wanted
            )
        finally:
            with s.lock:
                s.adapting = False
                s.last_used = time.monotonic()  # (its Adapt was a use: it did not expire meanwhile)
            if claim is not None:
                self.sessions.release_adaptation(s, claim)
        self.sessions.get(s.id)  # NOT_FOUND if the session was deleted while adapting
        self.metrics.adaptations.labels("ok").inc()
        self.metrics.adapt_seconds.observe(result.compute_seconds)
        log.info(
            "session %s adapted: %d step(s) on %d transitions, loss %.4g -> %.4g",
            log_id(s.id),
            steps,
            result.transitions,
            result.loss_before,
            result.loss_after,
            extra={"session": log_id(s.id)},
        )
        stats = pb.AdaptStats(
            steps=steps,
            loss_before=result.loss_before,
            loss_after=result.loss_after,
            transitions=result.transitions,
            episodes=len(eps),
            duration_seconds=time.perf_counter() - start,
            mean_return=float(np.mean([np.sum(rewards, dtype=np.float64) for *_, rewards in eps])),
        )
        if rate is not None:
            stats.success_rate = rate
        return pb.AdaptResponse(stats=stats, session=self._session_proto(s))

    def _run_adaptation(
        self,
        pv: PolicyVersion,
        params: np.ndarray,
        eps: list[validation.Episode],
        steps: int,
        first_step: int,
        context: Any,
    ) -> Any:
        ckpt = pv.checkpoint
        job = AdaptJob(
            ckpt.spec, ckpt.inner_loop, ckpt.learning_rates, params, eps, steps, first_step
        )
        remaining = context.time_remaining()  # huge without a deadline
        if remaining is not None and remaining > 86_400:
            remaining = None
        if not context.is_active() or remaining == 0:  # gone or expired: nobody would read it
            self.metrics.adaptations.labels("skipped").inc()
            raise Aborted("the call ended (cancelled or past its deadline) before adapting")
        try:
            return self.adapter.adapt(job, timeout=remaining, is_active=context.is_active)
        except Cancelled:
            self.metrics.adaptations.labels("skipped").inc()
            raise Aborted("the call ended while its adaptation waited; not computed") from None
        except ResourceExhausted:
            self.metrics.adaptations.labels("rejected").inc()
            raise
        except AdaptationError as exc:
            self.metrics.adaptations.labels(exc.kind).inc()
            if exc.kind == "invalid":
                raise InvalidArgument(str(exc)) from None
            raise FailedPrecondition(str(exc)) from None
        except TimeoutError:
            self.metrics.adaptations.labels("timeout").inc()
            raise Aborted("the call's deadline passed before the adaptation finished") from None
        except ServiceError:
            self.metrics.adaptations.labels("error").inc()
            raise

    def _recorded_episodes(
        self, s: Session
    ) -> tuple[list[validation.Episode], list[RecordedEpisode]]:
        if s.recording is None:
            raise FailedPrecondition(
                "no episodes sent and the session does not record: send "
                "episodes, or create the session with record=true"
            )
        with s.lock:
            recorded = s.recording.complete_episodes()
        if not recorded:
            raise FailedPrecondition(
                "no episodes sent and nothing recorded yet: act with feedback (rewards) first"
            )

        def too_big(eps: list[RecordedEpisode]) -> bool:
            total = sum(len(e.rewards) for e in eps)
            padded = len(eps) * max(len(e.rewards) for e in eps)
            return total > self.limits.max_transitions or padded > 2 * self.limits.max_transitions

        while len(recorded) > 1 and too_big(recorded):
            recorded.pop(0)  # keep the newest episodes that fit the limits
        used = list(recorded)  # what the recording forgets once the adaptation is applied
        if too_big(recorded):  # one episode longer than the limit: its newest steps
            e, n = recorded[0], self.limits.max_transitions
            recorded[0] = RecordedEpisode(e.observations[-n:], e.actions[-n:], e.rewards[-n:])
        space = s.policy.action_space
        start = int(space.start) if isinstance(space, gym.spaces.Discrete) else 0
        eps = [
            (
                np.stack(e.observations).astype(np.float32),
                np.stack(e.actions) - start if start else np.stack(e.actions),
                np.asarray(e.rewards, dtype=np.float32),
            )
            for e in recorded
        ]
        return eps, used
