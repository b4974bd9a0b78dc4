"""The asyncio client (AsyncPolicyClient on grpc.aio) against real servers."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest

from metarl_client import (
    AsyncActionStream,
    AsyncPolicyClient,
    AsyncSession,
    DeadlineExceeded,
    Episode,
    FailedPrecondition,
    InvalidArgument,
    PolicyClient,
    PolicyNotFound,
    SessionNotFound,
    Unauthenticated,
    Unavailable,
)
from metarl_server.app import create_server
from tests.client_support import TOKEN, FakePolicyService, free_port, start_fake

POLICY = "cartpole-family"
OBS = np.array([[0.01, -0.02, 0.03, 0.04], [0.1, 0.5, -0.05, -0.6]], np.float32)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def episodes(n: int = 2, length: int = 5) -> list[Episode]:
    rng = np.random.default_rng(0)
    return [
        Episode(
            rng.normal(0, 0.1, (length, 4)).astype(np.float32),
            rng.integers(0, 2, length),
            np.ones(length, np.float32),
            terminated=True,
        )
        for _ in range(n)
    ]


def record(calls: list[tuple[str, float | None]], details: Any) -> None:
    method = details.method
    name = method.decode() if isinstance(method, bytes) else method
    calls.append((name.rsplit("/", 1)[-1], details.timeout))


# (grpc.aio files an interceptor under its first matching kind only: one class per kind)
class UnaryRecorder(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, calls: list[tuple[str, float | None]]) -> None:
        self.calls = calls

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        record(self.calls, details)
        return await continuation(details, request)


class StreamRecorder(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, calls: list[tuple[str, float | None]]) -> None:
        self.calls = calls

    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        record(self.calls, details)
        return await continuation(details, request_iterator)


def test_every_method(server_target: str) -> None:
    async def main() -> None:
        calls: list[tuple[str, float | None]] = []
        async with AsyncPolicyClient(
            server_target, timeout=5.0, interceptors=[UnaryRecorder(calls), StreamRecorder(calls)]
        ) as client:
            (policy,) = [p for p in await client.list_policies() if p.name == POLICY]
            assert policy.observation_space.shape == (4,)
            async with await client.create_session(POLICY, seed=2, record=True) as session:
                assert isinstance(session, AsyncSession) and session.recording
                info = await session.info()
                assert (info.id, info.policy, info.adaptations) == (session.id, POLICY, 0)

                action = await session.act(OBS[0])
                assert type(action) is int and action in (0, 1)
                batch = await session.act_batch(OBS, deterministic=True)
                assert batch.actions.shape == (2,) and batch.log_probs.dtype == np.float32
                assert [await session.act(o, deterministic=True) for o in OBS] == (
                    batch.actions.tolist()
                )

                stream = session.stream(deterministic=True)
                assert isinstance(stream, AsyncActionStream)
                async with stream as loop:
                    got = [await loop.act(OBS[0]), await loop.act(OBS[1], reward=1.0)]
                    await loop.report(0.5, terminated=True)
                    assert loop.log_prob == pytest.approx(float(batch.log_probs[1]), abs=1e-6)
                assert got == batch.actions.tolist()
                assert (await session.info()).recorded_transitions == 2

                stats = await session.adapt()  # on the recording
                assert (stats.episodes, stats.transitions) == (1, 2)
                stats = await session.adapt(episodes(), steps=2)
                assert (stats.steps, stats.episodes, stats.transitions) == (2, 2, 10)
                reattached = await client.get_session(session.id)
                assert (await reattached.info()).adaptation_steps == 1 + 2
                info = await session.reset()
                assert (info.adaptations, info.adaptation_steps) == (0, 0)
                again = await session.act_batch(OBS, deterministic=True)
                np.testing.assert_array_equal(again.log_probs, batch.log_probs)
            with pytest.raises(SessionNotFound):
                await client.get_session(session.id)
            await session.close()  # already deleted: not an error
        assert {name for name, _ in calls} >= {
            "ListPolicies", "CreateSession", "GetSession", "Act", "StreamAct", "Adapt",
            "ResetSession", "DeleteSession",
        }  # fmt: skip
        for name, timeout in calls:
            if name != "StreamAct":  # a stream bounds each step instead
                assert timeout is not None and 0 < timeout <= (120 if name == "Adapt" else 5)

    run(main())


def test_many_sessions_concurrently(server_target: str) -> None:
    """32 sessions over one connection, each acting and adapting at once; the same seed gives
    the same actions whatever the interleaving."""

    async def one(client: AsyncPolicyClient, i: int) -> tuple[list[int], float]:
        async with await client.create_session(POLICY, seed=i % 4) as session:
            actions = [await session.act(np.zeros(4, np.float32)) for _ in range(10)]
            async with session.stream() as loop:
                for _ in range(5):
                    await loop.act(np.zeros(4, np.float32), reward=1.0)
            stats = await session.adapt(episodes(n=1, length=3))
            return actions, stats.loss_after

    async def main() -> list[tuple[list[int], float]]:
        async with AsyncPolicyClient(server_target) as client:
            return list(await asyncio.gather(*(one(client, i) for i in range(32))))

    results = run(main())
    for i, (actions, loss) in enumerate(results):
        assert actions == results[i % 4][0]
        assert loss == pytest.approx(results[0][1], rel=1e-5)


def test_errors_are_typed(server_target: str) -> None:
    async def main() -> None:
        async with AsyncPolicyClient(server_target) as client:
            with pytest.raises(PolicyNotFound, match="nope"):
                await client.create_session("nope")
            with pytest.raises(SessionNotFound, match="deleted, expired"):
                await client.get_session("missing")
            async with await client.create_session(POLICY) as session:
                with pytest.raises(FailedPrecondition, match="record"):
                    await session.adapt()
                with pytest.raises(InvalidArgument, match=r"shape \[4\]"):
                    await session.act(np.zeros(3))
                with pytest.raises(InvalidArgument, match=r"use act\(\)"):
                    await session.act_batch(np.zeros(4))
            loop = session.stream()  # the session is gone now
            with pytest.raises(SessionNotFound, match=session.id):
                await loop.act(OBS[0])
            with pytest.raises(SessionNotFound):
                await loop.act(OBS[0])
            await loop.close()

    run(main())


def test_sync_and_async_clients_share_sessions(server_target: str) -> None:
    with PolicyClient(server_target) as sync_client:
        session = sync_client.create_session(POLICY, seed=0)
        session.adapt(episodes())
        want = session.act_batch(OBS, deterministic=True)

        async def main() -> Any:
            async with AsyncPolicyClient(server_target) as client:
                again = await client.get_session(session.id)
                return await again.act_batch(OBS, deterministic=True)

        got = run(main())
        np.testing.assert_array_equal(got.log_probs, want.log_probs)
        session.close()


def test_retries_until_a_late_server_is_up(bundled_registry) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    servers: list = []

    async def main() -> list[str]:
        async with AsyncPolicyClient(f"localhost:{port}") as client:

            async def start_late() -> None:  # once the call has met no server
                channel = client._channel
                state = channel.get_state()
                while state != grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                    await asyncio.wait_for(channel.wait_for_state_change(state), 60)
                    state = channel.get_state()
                server, _ = create_server(f"[::]:{port}", bundled_registry)
                server.start()
                servers.append(server)

            policies, _ = await asyncio.gather(client.list_policies(), start_late())
            return [p.name for p in policies]

    try:
        assert POLICY in run(main())
    finally:
        for s in servers:
            s.stop(None)


def test_non_idempotent_calls_are_not_retried() -> None:
    servicer = FakePolicyService(unavailable=("Act",))
    server, port = start_fake(servicer)

    async def main() -> None:
        async with AsyncPolicyClient(f"localhost:{port}") as client:
            with pytest.raises(Unavailable, match="Act is unavailable"):
                await AsyncSession(client, session_proto(), None).act(np.zeros(4, np.float32))

    try:
        run(main())
        assert servicer.count("Act") == 1  # (CreateSession is retried; Act is not)
    finally:
        server.stop(None)


def test_non_idempotent_calls_fail_when_the_server_is_down() -> None:
    async def main() -> None:
        async with AsyncPolicyClient(f"localhost:{free_port()}") as client:
            with pytest.raises(Unavailable):
                await AsyncSession(client, session_proto(), None).act(np.zeros(4, np.float32))

    run(main())


def test_token_on_unary_and_stream_calls() -> None:
    servicer = FakePolicyService(token=TOKEN)
    server, port = start_fake(servicer)

    async def main() -> None:
        async with AsyncPolicyClient(f"localhost:{port}", token=TOKEN) as client:
            session = await client.create_session("fake")
            assert await session.act(np.zeros(4)) == 1
            async with session.stream() as loop:
                assert await loop.act(np.zeros(4)) == 1
            await session.close()
        async with AsyncPolicyClient(f"localhost:{port}", token="wrong") as client:
            with pytest.raises(Unauthenticated, match="bearer token"):
                await client.list_policies()
            loop = AsyncSession(client, session_proto(), None).stream()
            with pytest.raises(Unauthenticated, match="bearer token"):
                await loop.act(np.zeros(4))

    try:
        run(main())
    finally:
        server.stop(None)
    sent = [(name, md.get("authorization")) for name, md, _ in servicer.calls]
    # When grpc.aio hides the refused stream's status behind INTERNAL (grpc/grpc#36066; timing
    # dependent), the SDK asks the server why with a GetSession, with the same credentials.
    if sent[-1] == ("GetSession", "Bearer wrong"):
        sent.pop()
    assert sent == [
        ("CreateSession", f"Bearer {TOKEN}"),
        ("ListPolicies", f"Bearer {TOKEN}"),
        ("Act", f"Bearer {TOKEN}"),
        ("StreamAct", f"Bearer {TOKEN}"),
        ("DeleteSession", f"Bearer {TOKEN}"),
        ("ListPolicies", "Bearer wrong"),
        ("StreamAct", "Bearer wrong"),
    ]


def session_proto() -> Any:
    from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb

    return pb.Session(id="fake-session", policy="fake", version="1")


def test_stream_step_timeout() -> None:
    server, port = start_fake(FakePolicyService(silent_stream=True))

    async def main() -> None:
        async with AsyncPolicyClient(f"localhost:{port}", timeout=0.5) as client:
            session = await client.get_session("fake-session")
            loop = session.stream()
            with pytest.raises(DeadlineExceeded, match=r"no action within 0\.5 s"):
                await loop.act(np.zeros(4, np.float32))

    try:
        run(main())
    finally:
        server.stop(None)


def test_a_tls_client_of_a_plaintext_server_is_told_so(server_target: str) -> None:
    async def main() -> None:
        async with AsyncPolicyClient(server_target, tls=True, timeout=2) as client:
            with pytest.raises(Unavailable, match=r"TLS was refused .* does not speak TLS"):
                await client.list_policies()

    run(main())
