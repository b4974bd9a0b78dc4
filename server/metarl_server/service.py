"""The PolicyService implementation."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
import torch

from metarl import inner_loop, policies
from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.proto.metarl.v1 import policy_service_pb2_grpc as pb_grpc
from metarl_client.tensors import to_tensor
from metarl_server import validation
from metarl_server.errors import FailedPrecondition, InvalidArgument, ServiceError
from metarl_server.registry import PolicyRegistry, PolicyVersion
from metarl_server.sessions import Session, SessionStore

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
            raise

    return wrapper  # type: ignore[return-value]


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
    def __init__(self, registry: PolicyRegistry, sessions: SessionStore, limits: Limits) -> None:
        self.registry = registry
        self.sessions = sessions
        self.limits = limits

    # -- helpers -----------------------------------------------------------------------------

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
        self, s: Session, obs: torch.Tensor, deterministic: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        params = s.params  # one read: an Adapt swapping params mid-call cannot mix old and new
        spec = s.policy.spec
        with torch.no_grad(), s.lock:
            acts, logp = policies.act(
                spec, params, obs, deterministic=deterministic, generator=s.generator
            )
        space = s.policy.action_space
        if isinstance(space, gym.spaces.Discrete):
            return (acts + int(space.start)).numpy(), logp.numpy()
        return acts.numpy().reshape(-1, *space.shape), logp.numpy()  # type: ignore[misc]

    def _record(
        self,
        s: Session,
        feedback: pb.StepFeedback | None,
        obs: torch.Tensor | None,
        action: np.ndarray | None,
    ) -> None:
        if s.recording is None:
            return
        with s.lock:
            if feedback is not None:
                s.recording.feedback(feedback.reward, feedback.terminated, feedback.truncated)
            if obs is not None and action is not None:
                s.recording.step(obs[0].numpy(), action[0])

    # -- RPCs --------------------------------------------------------------------------------

    @_status_on_error
    def ListPolicies(
        self, request: pb.ListPoliciesRequest, context: Any
    ) -> pb.ListPoliciesResponse:
        out = []
        for versions in self.registry.list():
            latest: PolicyVersion = versions[-1]
            il = latest.checkpoint.inner_loop
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
                    ),
                    max_batch_size=self.limits.max_batch_size,
                )
            )
        return pb.ListPoliciesResponse(policies=out)

    @_status_on_error
    def CreateSession(
        self, request: pb.CreateSessionRequest, context: Any
    ) -> pb.CreateSessionResponse:
        if not request.policy:
            raise InvalidArgument("policy is required: name one of ListPolicies' policies")
        pv = self.registry.get(request.policy, request.version)
        seed = request.seed if request.HasField("seed") else None
        s = self.sessions.create(pv, seed, request.record)
        return pb.CreateSessionResponse(session=self._session_proto(s))

    @_status_on_error
    def GetSession(self, request: pb.GetSessionRequest, context: Any) -> pb.GetSessionResponse:
        return pb.GetSessionResponse(
            session=self._session_proto(self.sessions.get(request.session_id))
        )

    @_status_on_error
    def ResetSession(
        self, request: pb.ResetSessionRequest, context: Any
    ) -> pb.ResetSessionResponse:
        s = self.sessions.get(request.session_id)
        with s.lock:
            s.params = s.policy.checkpoint.params
            s.adaptation_steps = s.adaptations = 0
            if s.recording is not None:
                s.recording = type(s.recording)()
        return pb.ResetSessionResponse(session=self._session_proto(s))

    @_status_on_error
    def DeleteSession(
        self, request: pb.DeleteSessionRequest, context: Any
    ) -> pb.DeleteSessionResponse:
        self.sessions.delete(request.session_id)
        return pb.DeleteSessionResponse()

    @_status_on_error
    def Act(self, request: pb.ActRequest, context: Any) -> pb.ActResponse:
        s = self.sessions.get(request.session_id)
        obs, single = validation.observations(
            request.observations, s.policy, self.limits.max_batch_size
        )
        feedback = request.feedback if request.HasField("feedback") else None
        if feedback is not None and not single:
            raise InvalidArgument("feedback goes with single-observation Act calls only")
        acts, logp = self._act(s, obs, request.deterministic)
        if single:
            self._record(s, feedback, obs, acts)
            return pb.ActResponse(actions=to_tensor(acts[0]), log_probs=to_tensor(logp[0]))
        return pb.ActResponse(actions=to_tensor(acts), log_probs=to_tensor(logp))

    def StreamAct(
        self, request_iterator: Iterator[pb.StreamActRequest], context: Any
    ) -> Iterator[pb.StreamActResponse]:
        session: Session | None = None
        try:
            for req in request_iterator:
                if session is None or (req.session_id and req.session_id != session.id):
                    if not req.session_id:
                        raise InvalidArgument("the first StreamAct message must name session_id")
                    session = self.sessions.get(req.session_id)
                else:
                    session = self.sessions.get(session.id)  # still alive, and keeps it so
                feedback = req.feedback if req.HasField("feedback") else None
                if not req.HasField("observation"):
                    self._record(session, feedback, None, None)
                    continue
                obs, single = validation.observations(
                    req.observation, session.policy, 1, "observation"
                )
                if not single:
                    raise InvalidArgument("StreamAct takes one observation per message")
                acts, logp = self._act(session, obs, req.deterministic)
                self._record(session, feedback, obs, acts)
                yield pb.StreamActResponse(action=to_tensor(acts[0]), log_prob=float(logp[0]))
        except ServiceError as exc:
            context.abort(exc.code, str(exc))

    @_status_on_error
    def ReportFeedback(
        self, request: pb.ReportFeedbackRequest, context: Any
    ) -> pb.ReportFeedbackResponse:
        s = self.sessions.get(request.session_id)
        if s.recording is None:
            raise FailedPrecondition("the session does not record: create it with record=true")
        self._record(s, request.feedback, None, None)
        return pb.ReportFeedbackResponse(session=self._session_proto(s))

    @_status_on_error
    def Adapt(self, request: pb.AdaptRequest, context: Any) -> pb.AdaptResponse:
        start = time.perf_counter()
        s = self.sessions.get(request.session_id)
        pv = s.policy
        ckpt = pv.checkpoint
        steps = request.steps if request.HasField("steps") else ckpt.inner_loop.steps
        if not 1 <= steps <= self.limits.max_adapt_steps:
            raise InvalidArgument(
                f"steps must be between 1 and {self.limits.max_adapt_steps}, got {steps}"
            )
        if request.episodes:
            eps = validation.episodes(list(request.episodes), pv, self.limits.max_transitions)
        else:
            eps = self._recorded_episodes(s)
        batch = inner_loop.prepare(inner_loop.pad_episodes(eps), ckpt.inner_loop)
        lr = ckpt.learning_rates if ckpt.learning_rates is not None else ckpt.inner_loop.lr
        params = s.params
        with torch.no_grad():
            loss_before = inner_loop.reinforce_loss(
                pv.spec, policies.stack(pv.spec, params, 1), batch
            ).item()
        adapted = inner_loop.adapt(pv.spec, params, batch, lr=lr, steps=steps)
        with torch.no_grad():
            loss_after = inner_loop.reinforce_loss(pv.spec, adapted, batch).item()
        new_params = {k: v[0].contiguous() for k, v in adapted.items()}
        if not all(torch.isfinite(v).all() for v in new_params.values()):
            raise FailedPrecondition(
                "adaptation diverged (non-finite parameters); the session "
                "keeps its parameters: send fewer steps or other data"
            )
        with s.lock:
            s.params = new_params
            s.adaptation_steps += steps
            s.adaptations += 1
            if not request.episodes and s.recording is not None:
                s.recording = type(s.recording)()
        stats = pb.AdaptStats(
            steps=steps,
            loss_before=loss_before,
            loss_after=loss_after,
            transitions=int(batch.mask.sum().item()),
            episodes=len(eps),
            duration_seconds=time.perf_counter() - start,
        )
        return pb.AdaptResponse(stats=stats, session=self._session_proto(s))

    def _recorded_episodes(
        self, s: Session
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
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
        while (
            len(recorded) > 1
            and sum(len(e.rewards) for e in recorded) > self.limits.max_transitions
        ):
            recorded.pop(0)  # keep the newest episodes that fit the limit
        discrete = isinstance(s.policy.action_space, gym.spaces.Discrete)
        return [
            (
                torch.as_tensor(np.stack(e.observations)),
                torch.as_tensor(
                    np.stack(e.actions)
                    - (
                        int(s.policy.action_space.start)  # type: ignore[attr-defined]
                        if discrete
                        else 0
                    )
                ),
                torch.as_tensor(e.rewards, dtype=torch.float32),
            )
            for e in recorded
        ]
