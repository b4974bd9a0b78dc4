"""The synchronous client SDK against real servers: every method, client-side checks, the
error mapping, deadlines, retries on a server that comes up late, token auth and TLS."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from metarl_client import (
    ActionStream,
    DeadlineExceeded,
    Episode,
    FailedPrecondition,
    InvalidArgument,
    MetarlError,
    PolicyClient,
    PolicyNotFound,
    ResourceExhausted,
    Session,
    SessionNotFound,
    Unauthenticated,
    Unavailable,
)
from metarl_client.errors import from_rpc_error
from metarl_server.app import ServeConfig, create_server
from tests.client_support import (
    TOKEN,
    CallRecorder,
    FakePolicyService,
    free_port,
    self_signed_cert,
    start_fake,
    start_when_connecting_failed,
)

POLICY = "cartpole-family"
OBS = np.array(
    [[0.01, -0.02, 0.03, 0.04], [0.1, 0.5, -0.05, -0.6], [-0.2, 0.0, 0.1, 0.3]], np.float32
)


@pytest.fixture
def client(server_target: str) -> Iterator[PolicyClient]:
    with PolicyClient(server_target) as c:
        yield c


@contextlib.contextmanager
def serving(registry, **cfg) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A real server with ServeConfig overrides."""
    server, port = create_server("[::]:0", registry, ServeConfig(**cfg))
    server.start()
    try:
        yield f"localhost:{port}"
    finally:
        server.stop(None)


def synthetic_episodes(n: int = 2, length: int = 5, seed: int = 0) -> list[Episode]:
    rng = np.random.default_rng(seed)
    return [
        Episode(
            rng.normal(0, 0.1, (length, 4)).astype(np.float32),
            rng.integers(0, 2, length),
            np.ones(length, np.float32),
            terminated=True,
        )
        for _ in range(n)
    ]


# -- policies and sessions -------------------------------------------------------------------


def test_list_policies_describes_the_bundled_policy(client: PolicyClient) -> None:
    (policy,) = [p for p in client.list_policies() if p.name == POLICY]
    assert policy.latest_version in policy.versions
    assert policy.env_id == "metarl/CartPoleFamily-v0"
    assert policy.observation_space.kind == "box"
    assert policy.observation_space.shape == (4,)
    assert policy.observation_space.dtype == np.float32
    assert (policy.action_space.kind, policy.action_space.n) == ("discrete", 2)
    assert policy.action_space.start == 0
    assert policy.inner_loop.max_steps == 10
    assert policy.inner_loop.default_steps >= 1
    assert policy.max_batch_size == 1024
    assert client.policy(POLICY) == policy  # cached


def test_session_lifecycle(client: PolicyClient) -> None:
    with client.create_session(POLICY, seed=3) as session:
        assert isinstance(session, Session)
        assert session.id and session.policy == POLICY
        info = session.info()
        assert (info.id, info.policy, info.version) == (session.id, POLICY, session.version)
        assert (info.adaptations, info.adaptation_steps, info.recording) == (0, 0, False)
        assert info.create_time <= info.expire_time
    with pytest.raises(SessionNotFound, match=session.id):
        client.get_session(session.id)
    session.close()  # already gone: not an error


def test_create_session_pins_a_version(client: PolicyClient) -> None:
    policy = client.policy(POLICY)
    with client.create_session(POLICY, version=policy.versions[0]) as session:
        assert session.version == policy.versions[0]
    with pytest.raises(PolicyNotFound, match="no-such-version"):
        client.create_session(POLICY, version="no-such-version")


def test_get_session_reattaches_after_a_client_restart(server_target: str) -> None:
    with PolicyClient(server_target) as first:
        session = first.create_session(POLICY, seed=1)
        session.adapt(synthetic_episodes())
        before = session.act_batch(OBS, deterministic=True)
    with PolicyClient(server_target) as second:  # the robot's process restarted
        again = second.get_session(session.id)
        assert (again.id, again.policy, again.version) == (
            session.id,
            session.policy,
            session.version,
        )
        assert again.info().adaptations == 1
        after = again.act_batch(OBS, deterministic=True)
        np.testing.assert_array_equal(after.actions, before.actions)
        np.testing.assert_array_equal(after.log_probs, before.log_probs)
        again.close()


# -- acting ----------------------------------------------------------------------------------


def test_act_returns_an_int_and_act_batch_arrays(client: PolicyClient) -> None:
    with client.create_session(POLICY, seed=0) as session:
        action = session.act(OBS[0])
        assert type(action) is int and action in (0, 1)
        result = session.act_batch(OBS)
        assert result.actions.shape == (3,) and result.actions.dtype.kind == "i"
        assert set(result.actions.tolist()) <= {0, 1}
        assert result.log_probs.shape == (3,) and result.log_probs.dtype == np.float32
        assert (result.log_probs < 0).all()
        det = session.act_batch(OBS, deterministic=True)
        # the most likely of two actions has probability >= 1/2
        assert (det.log_probs >= np.log(0.5) - 1e-6).all()
        singles = [session.act(o, deterministic=True) for o in OBS]
        assert singles == det.actions.tolist()
        result.actions[0] = 1  # numpy out: writable arrays
        # lists and float64 are accepted (cast to the space's float32)
        assert session.act(OBS[0].astype(np.float64).tolist(), deterministic=True) == singles[0]


def test_seeded_sessions_sample_the_same_actions(client: PolicyClient) -> None:
    obs = np.zeros((64, 4), np.float32)
    a = client.create_session(POLICY, seed=7)
    b = client.create_session(POLICY, seed=7)
    c = client.create_session(POLICY, seed=8)
    try:
        sa, sb, sc = (s.act_batch(obs).actions for s in (a, b, c))
        np.testing.assert_array_equal(sa, sb)
        assert not np.array_equal(sa, sc)
    finally:
        for s in (a, b, c):
            s.close()


def test_act_batch_splits_batches_larger_than_the_server_limit(bundled_registry) -> None:  # type: ignore[no-untyped-def]
    recorder = CallRecorder()
    with (
        serving(bundled_registry, max_batch_size=8) as target,
        PolicyClient(target, interceptors=[recorder]) as client,
        client.create_session(POLICY) as session,
    ):
        obs = np.random.default_rng(0).normal(0, 0.1, (20, 4)).astype(np.float32)
        recorder.calls.clear()
        result = session.act_batch(obs, deterministic=True)
        assert recorder.names() == ["Act", "Act", "Act"]  # 8 + 8 + 4
        assert result.actions.shape == (20,) and result.log_probs.shape == (20,)
        assert result.actions.tolist() == [session.act(o, deterministic=True) for o in obs]


# -- adapting --------------------------------------------------------------------------------


def test_adapt_reset_and_their_counters(client: PolicyClient) -> None:
    with client.create_session(POLICY, seed=0) as session:
        original = session.act_batch(OBS, deterministic=True)
        episodes = synthetic_episodes(n=3, length=4)
        stats = session.adapt(episodes)
        assert stats.steps == client.policy(POLICY).inner_loop.default_steps
        assert (stats.episodes, stats.transitions) == (3, 12)
        assert stats.duration_seconds > 0
        assert np.isfinite([stats.loss_before, stats.loss_after]).all()
        adapted = session.act_batch(OBS, deterministic=True)
        assert not np.allclose(adapted.log_probs, original.log_probs)

        stats = session.adapt(episodes, steps=3)
        assert stats.steps == 3
        info = session.info()
        assert (info.adaptations, info.adaptation_steps) == (2, 1 + 3)

        info = session.reset()
        assert (info.adaptations, info.adaptation_steps) == (0, 0)
        again = session.act_batch(OBS, deterministic=True)
        np.testing.assert_array_equal(again.log_probs, original.log_probs)


def test_adapt_without_episodes_needs_a_recording(client: PolicyClient) -> None:
    with client.create_session(POLICY) as session:
        with pytest.raises(FailedPrecondition, match="record"):
            session.adapt()
        with pytest.raises(FailedPrecondition, match="record"):
            session.report(1.0)


# -- streaming and recording -----------------------------------------------------------------


def test_stream_serves_the_same_actions_as_act(client: PolicyClient) -> None:
    with client.create_session(POLICY) as session:
        expected = session.act_batch(OBS, deterministic=True)
        with session.stream(deterministic=True) as loop:
            assert isinstance(loop, ActionStream)
            got = []
            for i, o in enumerate(OBS):
                got.append(loop.act(o, reward=None if i == 0 else 1.0))
                assert loop.log_prob == pytest.approx(float(expected.log_probs[i]), abs=1e-6)
        assert got == expected.actions.tolist()
        with pytest.raises(FailedPrecondition, match="closed"):
            loop.act(OBS[0])


def test_recorded_stream_adapts_like_the_same_episodes_sent(client: PolicyClient) -> None:
    """A recording session fed by a stream adapts to the same parameters as a session sent
    the same episodes explicitly (same loss before and after, same actions after)."""
    rng = np.random.default_rng(5)
    lengths = [4, 6, 3]
    recording = client.create_session(POLICY, seed=11, record=True)
    explicit = client.create_session(POLICY, seed=11)
    try:
        assert recording.recording and recording.info().recording
        episodes = []
        with recording.stream() as loop:
            reward = None
            for n, length in enumerate(lengths):
                obs = rng.normal(0, 0.1, (length, 4)).astype(np.float32)
                rewards = rng.uniform(0, 1, length).astype(np.float32)
                actions = []
                for t in range(length):  # each message carries the previous step's reward
                    actions.append(loop.act(obs[t], reward=reward))
                    reward = float(rewards[t])
                last = n == len(lengths) - 1
                # the final reward ends the episode (the last one cut short)
                loop.report(reward, terminated=not last, truncated=last)
                reward = None
                episodes.append(
                    Episode(obs, np.array(actions), rewards, terminated=not last, truncated=last)
                )
        assert recording.info().recorded_transitions == sum(lengths)
        got = recording.adapt()
        want = explicit.adapt(episodes)
        assert (got.episodes, got.transitions) == (3, sum(lengths))
        assert got.loss_before == pytest.approx(want.loss_before, rel=1e-5, abs=1e-6)
        assert got.loss_after == pytest.approx(want.loss_after, rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(
            recording.act_batch(OBS, deterministic=True).log_probs,
            explicit.act_batch(OBS, deterministic=True).log_probs,
            rtol=1e-5,
        )
        assert recording.info().recorded_transitions == 0  # adapting consumed the recording
    finally:
        recording.close()
        explicit.close()


def test_act_with_feedback_records_too(client: PolicyClient) -> None:
    with client.create_session(POLICY, record=True) as session:
        session.act(OBS[0])
        session.act(OBS[1], reward=1.0)
        session.act(OBS[2], reward=0.5)
        info = session.report(2.0, terminated=True)
        assert info.recorded_transitions == 3
        stats = session.adapt()
        assert (stats.episodes, stats.transitions) == (1, 3)


def test_stream_on_a_missing_session_raises_session_not_found(client: PolicyClient) -> None:
    session = client.create_session(POLICY)
    session.close()
    loop = session.stream()
    with pytest.raises(SessionNotFound, match=session.id):
        loop.act(OBS[0])
    with pytest.raises(SessionNotFound):  # the stream stays failed
        loop.act(OBS[0])
    loop.close()


def test_stream_step_waits_at_most_the_client_timeout() -> None:
    servicer = FakePolicyService(silent_stream=True)
    server, port = start_fake(servicer)
    try:
        with PolicyClient(f"localhost:{port}", timeout=0.5) as client:
            session = client.get_session("fake-session")
            loop = session.stream()
            # (the server never answers: only the client's step timeout can end the wait)
            with pytest.raises(DeadlineExceeded, match=r"no action within 0\.5 s"):
                loop.act(np.zeros(4, np.float32))
    finally:
        server.stop(None)


# -- client-side checks ----------------------------------------------------------------------

BAD_CALLS = [
    ("act", lambda s: s.act(np.zeros(5)), InvalidArgument, r"shape \[4\].*got \[5\]"),
    ("act on a batch", lambda s: s.act(OBS), InvalidArgument, "act_batch"),
    ("act_batch on one", lambda s: s.act_batch(OBS[0]), InvalidArgument, r"use act\(\)"),
    ("empty batch", lambda s: s.act_batch(np.zeros((0, 4))), InvalidArgument, "empty"),
    ("strings", lambda s: s.act(["a", "b", "c", "d"]), InvalidArgument, "numeric"),
    ("ragged", lambda s: s.act([[1.0], [1.0, 2.0]]), InvalidArgument, "rectangular|numeric"),
    ("nan", lambda s: s.act([0.0, np.nan, 0.0, 0.0]), InvalidArgument, r"NaN.*index \[1\]"),
    ("inf batch", lambda s: s.act_batch(np.full((2, 4), np.inf)), InvalidArgument, "NaN or inf"),
    ("done without reward", lambda s: s.act(OBS[0], terminated=True), InvalidArgument, "reward"),
    ("nan reward", lambda s: s.act(OBS[0], reward=float("nan")), InvalidArgument, "finite"),
    ("steps 0", lambda s: s.adapt(synthetic_episodes(), steps=0), InvalidArgument, "between 1"),
    ("steps 11", lambda s: s.adapt(synthetic_episodes(), steps=11), InvalidArgument, "and 10"),
    (
        "action out of range",
        lambda s: s.adapt([Episode(np.zeros((3, 4)), [0, 1, 2], np.ones(3))]),
        InvalidArgument,
        r"\[0, 1\]",
    ),
    (
        "observations per reward",
        lambda s: s.adapt([Episode(np.zeros((2, 4)), [0, 1, 0], np.ones(3))]),
        InvalidArgument,
        r"observations must have shape \[3, 4\]",
    ),
    (
        "actions per reward",
        lambda s: s.adapt([Episode(np.zeros((3, 4)), [0, 1], np.ones(3))]),
        InvalidArgument,
        r"shape \[3\]",
    ),
    (
        "empty episode",
        lambda s: s.adapt([Episode(np.zeros((0, 4)), [], [])]),
        InvalidArgument,
        "T >= 1",
    ),
    (
        "non-integer actions",
        lambda s: s.adapt([Episode(np.zeros((2, 4)), [0.5, 1.0], np.ones(2))]),
        InvalidArgument,
        "integers",
    ),
    (
        "nan reward in episode",
        lambda s: s.adapt([Episode(np.zeros((1, 4)), [0], [np.nan])]),
        InvalidArgument,
        "rewards",
    ),
    ("not an Episode", lambda s: s.adapt([(1, 2, 3)]), InvalidArgument, "Episode"),
    ("no episodes", lambda s: s.adapt([]), InvalidArgument, "episodes=None"),
]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [case[1:] for case in BAD_CALLS],
    ids=[case[0] for case in BAD_CALLS],
)
def test_client_side_checks_raise_before_any_rpc(
    server_target: str,
    call,
    error,
    message,  # type: ignore[no-untyped-def]
) -> None:
    recorder = CallRecorder()
    with (
        PolicyClient(server_target, interceptors=[recorder]) as client,
        client.create_session(POLICY) as session,
    ):
        recorder.calls.clear()
        with pytest.raises(error, match=message) as exc_info:
            call(session)
        assert recorder.calls == []
        assert exc_info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_too_many_transitions_is_resource_exhausted_before_sending(bundled_registry) -> None:  # type: ignore[no-untyped-def]
    recorder = CallRecorder()
    with (
        serving(bundled_registry, max_transitions=8) as target,
        PolicyClient(target, interceptors=[recorder]) as client,
        client.create_session(POLICY) as session,
    ):
        recorder.calls.clear()
        with pytest.raises(ResourceExhausted, match="limit of 8 transitions"):
            session.adapt(synthetic_episodes(n=2, length=5))
        assert recorder.calls == []
        assert session.adapt(synthetic_episodes(n=2, length=4)).transitions == 8


def test_bad_seed_is_refused(client: PolicyClient) -> None:
    with pytest.raises(InvalidArgument, match="non-negative"):
        client.create_session(POLICY, seed=-1)


# -- errors from the server ------------------------------------------------------------------


def test_server_errors_become_typed_exceptions_with_the_servers_message(
    client: PolicyClient,
) -> None:
    with pytest.raises(PolicyNotFound, match="no-such-policy") as e1:
        client.create_session("no-such-policy")
    assert isinstance(e1.value, LookupError) and e1.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(SessionNotFound, match="deleted, expired") as e2:
        client.get_session("0123")
    assert e2.value.message == str(e2.value)
    with pytest.raises(InvalidArgument, match="policy is required") as e3:
        client.create_session("")  # checked by the server
    assert isinstance(e3.value, ValueError)


def test_slow_answers_raise_deadline_exceeded() -> None:
    servicer = FakePolicyService(delay=3.0)  # answers, late: only the deadline can fail the call
    server, port = start_fake(servicer)
    try:
        with PolicyClient(f"localhost:{port}", timeout=0.2) as client:
            with pytest.raises(DeadlineExceeded) as exc_info:
                client.list_policies()
            assert isinstance(exc_info.value, TimeoutError)
        ((name, _, remaining),) = servicer.calls
        assert name == "ListPolicies" and remaining is not None and remaining <= 0.2
    finally:
        server.stop(None)


def test_session_limit_is_resource_exhausted(bundled_registry) -> None:  # type: ignore[no-untyped-def]
    with serving(bundled_registry, max_sessions=1) as target, PolicyClient(target) as client:
        with (
            client.create_session(POLICY),
            pytest.raises(ResourceExhausted, match="maximum of 1 sessions"),
        ):
            client.create_session(POLICY)
        client.create_session(POLICY).close()  # freed on exit


def test_unmapped_status_codes_keep_code_and_message() -> None:
    class Err(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.DATA_LOSS

        def details(self) -> str:
            return "bits fell off"

    err = from_rpc_error(Err())
    assert type(err) is MetarlError
    assert (err.code, str(err)) == (grpc.StatusCode.DATA_LOSS, "bits fell off")


def test_session_context_does_not_hide_the_error_leaving_it(bundled_registry) -> None:  # type: ignore[no-untyped-def]
    server, port = create_server("[::]:0", bundled_registry)
    server.start()
    client = PolicyClient(f"localhost:{port}", timeout=1)
    try:
        with pytest.raises(KeyError, match="the robot's own error"), client.create_session(POLICY):
            server.stop(None).wait()  # deleting the session on exit will fail
            raise KeyError("the robot's own error")
    finally:
        server.stop(None)
        client.close()


# -- deadlines and retries -------------------------------------------------------------------


def test_every_call_has_a_deadline(server_target: str) -> None:
    recorder = CallRecorder()
    with PolicyClient(
        server_target, timeout=7.0, adapt_timeout=70.0, interceptors=[recorder]
    ) as client:
        client.list_policies()
        with client.create_session(POLICY, record=True) as session:
            client.get_session(session.id)
            session.info()
            session.act(OBS[0])
            session.act_batch(OBS)
            session.report(1.0, terminated=True)
            session.adapt()
            session.reset()
    names = recorder.names()
    assert set(names) == {
        "ListPolicies", "CreateSession", "GetSession", "Act", "ReportFeedback", "Adapt",
        "ResetSession", "DeleteSession",
    }  # fmt: skip
    for name, timeout in recorder.calls:
        want = 70.0 if name == "Adapt" else 7.0
        assert timeout is not None and 0 < timeout <= want, (name, timeout)


def late_server(registry, port: int, client: PolicyClient) -> tuple[threading.Thread, list]:  # type: ignore[no-untyped-def]
    """A server on ``port`` that starts once ``client``'s channel has failed to connect (its
    first attempt met no server), whatever the machine's speed."""
    servers: list = []

    def start() -> None:
        server, _ = create_server(f"[::]:{port}", registry)
        server.start()
        servers.append(server)

    _, thread = start_when_connecting_failed(client._channel, start)
    return thread, servers


@pytest.mark.parametrize("method", ["list_policies", "get_session", "delete_session"])
def test_idempotent_calls_retry_until_a_late_server_is_up(bundled_registry, method) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    recorder = CallRecorder()
    client = PolicyClient(f"localhost:{port}", interceptors=[recorder])
    thread, servers = late_server(bundled_registry, port, client)
    try:
        if method == "list_policies":
            assert POLICY in [p.name for p in client.list_policies()]
        elif method == "get_session":
            with pytest.raises(SessionNotFound):  # the server answered: no such session
                client.get_session("does-not-exist")
        else:  # the server answered NOT_FOUND, which close() takes as already deleted
            Session(client, _fake_session(), None).close()
        assert servers  # answered by the server that started after the call met none
        assert len(recorder.calls) == 1  # gRPC's retry policy, not a loop around the call
    finally:
        thread.join()
        for s in servers:
            s.stop(None)
        client.close()


def test_without_the_retry_policy_the_same_call_fails(bundled_registry) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    client = PolicyClient(f"localhost:{port}", options=[("grpc.enable_retries", 0)])
    thread, servers = late_server(bundled_registry, port, client)
    try:
        with pytest.raises(Unavailable) as exc_info:
            client.list_policies()
        assert isinstance(exc_info.value, ConnectionError)
    finally:
        thread.join()
        for s in servers:
            s.stop(None)
        client.close()


def test_non_idempotent_calls_are_not_retried() -> None:
    # (CreateSession is retried: a server that is starting answers UNAVAILABLE until loaded,
    # tests/test_server_startup.py; Act, which changes its session, is not: one attempt)
    servicer = FakePolicyService(unavailable=("Act",))
    server, port = start_fake(servicer)
    try:
        with PolicyClient(f"localhost:{port}") as client:
            session = Session(client, _fake_session(), None)
            with pytest.raises(Unavailable, match="Act is unavailable"):
                session.act(np.zeros(4, np.float32))
        assert servicer.count("Act") == 1
    finally:
        server.stop(None)


def test_non_idempotent_calls_fail_when_the_server_is_down() -> None:
    with PolicyClient(f"localhost:{free_port()}") as client, pytest.raises(Unavailable):
        Session(client, _fake_session(), None).act(np.zeros(4, np.float32))


# -- token and TLS ---------------------------------------------------------------------------


def test_token_is_sent_as_bearer_metadata_on_every_call() -> None:
    servicer = FakePolicyService(token=TOKEN)
    server, port = start_fake(servicer)
    try:
        with PolicyClient(f"localhost:{port}", token=TOKEN) as client:
            session = client.create_session("fake")
            assert session.act(np.zeros(4)) == 1
            with session.stream() as loop:
                assert loop.act(np.zeros(4)) == 1
                assert loop.act(np.zeros(4), reward=1.0) == 1
            session.close()
        assert [c[0] for c in servicer.calls] == [
            "CreateSession", "ListPolicies", "Act", "StreamAct", "DeleteSession",
        ]  # fmt: skip
        assert all(md["authorization"] == f"Bearer {TOKEN}" for _, md, _ in servicer.calls)

        for token in (None, "wrong"):
            with PolicyClient(f"localhost:{port}", token=token) as client:
                with pytest.raises(Unauthenticated, match="bearer token"):
                    client.list_policies()
                loop = Session(client, _fake_session(), None).stream()
                with pytest.raises(Unauthenticated, match="bearer token"):
                    loop.act(np.zeros(4))
    finally:
        server.stop(None)


def _fake_session():  # type: ignore[no-untyped-def]
    from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb

    return pb.Session(id="fake-session", policy="fake", version="1")


def test_bad_tokens_are_refused_before_connecting() -> None:
    with pytest.raises(ValueError, match="line breaks"):
        PolicyClient("localhost:1", token="a\nb")


def test_tls_with_a_root_certificate_path_or_bytes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = self_signed_cert(tmp_path)
    if files is None:
        pytest.skip("openssl is not installed")
    cert, key = files
    server, port = start_fake(FakePolicyService(), (cert.read_bytes(), key.read_bytes()))
    try:
        for tls in (cert, str(cert), cert.read_bytes()):
            with PolicyClient(f"localhost:{port}", tls=tls, token=TOKEN) as client:
                assert [p.name for p in client.list_policies()] == ["fake"]
        with (
            PolicyClient(f"localhost:{port}", timeout=2) as plaintext,
            pytest.raises(Unavailable, match=r"speaks TLS and this client plaintext: .*tls=True"),
        ):  # (Act is not retried: fails at once, and says why)
            Session(plaintext, _fake_session(), None).act(np.zeros(4, np.float32))
    finally:
        server.stop(None)


def test_token_against_the_real_server(bundled_registry) -> None:  # type: ignore[no-untyped-def]
    with serving(bundled_registry, auth_token=TOKEN) as target:
        with PolicyClient(target, token=TOKEN) as client, client.create_session(POLICY) as session:
            assert session.act(OBS[0]) in (0, 1)
            with session.stream() as loop:
                assert loop.act(OBS[0]) in (0, 1)
            assert session.adapt(synthetic_episodes()).episodes == 2
        for token in (None, "wrong"):
            with PolicyClient(target, token=token) as client:
                with pytest.raises(Unauthenticated):
                    client.list_policies()
                with pytest.raises(Unauthenticated):
                    client.create_session(POLICY)


def test_tls_against_the_real_server(bundled_registry, tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = self_signed_cert(tmp_path)
    if files is None:
        pytest.skip("openssl is not installed")
    cert, key = files
    with (
        serving(bundled_registry, tls_cert=cert, tls_key=key) as target,
        PolicyClient(target, tls=cert) as client,
        client.create_session(POLICY) as session,
    ):
        assert session.act(OBS[0]) in (0, 1)
        with session.stream() as loop:
            assert loop.act(OBS[0]) in (0, 1)


TLS_AGAINST_PLAINTEXT = """
import sys
from metarl_client import PolicyClient, Unavailable
with PolicyClient(sys.argv[1], tls=True, timeout=2) as client:
    try:
        client.list_policies()
    except Unavailable as exc:
        print(exc)
"""


def test_a_tls_client_of_a_plaintext_server_gets_one_error_saying_so(server_target: str) -> None:
    # a fresh process: gRPC reads its log verbosity when first imported, as in a user's program
    proc = subprocess.run(
        [sys.executable, "-c", TLS_AGAINST_PLAINTEXT, server_target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"TLS was refused by {server_target}: the server does not speak")
    assert "plaintext" in proc.stdout and "tls=None" in proc.stdout
    assert proc.stderr == ""  # none of gRPC's "Handshake failed" lines


def test_a_tls_handshake_that_fails_for_another_reason_is_not_called_plaintext(tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = self_signed_cert(tmp_path)
    if files is None:
        pytest.skip("openssl is not installed")
    cert, key = files
    server, port = start_fake(FakePolicyService(), (cert.read_bytes(), key.read_bytes()))
    try:  # the system's roots do not trust the self-signed certificate: not a plaintext server
        with (
            PolicyClient(f"localhost:{port}", tls=True, timeout=2) as client,
            pytest.raises((Unavailable, DeadlineExceeded)) as exc_info,
        ):
            client.list_policies()
        assert "TLS was refused" not in str(exc_info.value)
    finally:
        server.stop(None)


def test_a_stream_report_with_a_keyword_it_does_not_take_says_what_it_takes(
    client: PolicyClient,
) -> None:
    with client.create_session(POLICY) as session, session.stream() as loop:
        loop.act(OBS[0])
        with pytest.raises(TypeError) as exc_info:
            loop.report(1.0, done=True)  # type: ignore[call-arg]
        message = str(exc_info.value)
        assert "'done'" in message and "(reward, terminated=False, truncated=False)" in message
        assert "terminated or truncated" in message
        with pytest.raises(TypeError, match=r"reward=None, terminated=False, truncated=False"):
            loop.act(OBS[0], 1.0, done=False)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match=r"Session\.report\(\) .*'done'"):
            session.report(1.0, done=True)  # type: ignore[call-arg]
        loop.report(1.0, terminated=True)  # the real call


def test_the_version_is_the_installed_distributions() -> None:
    import importlib.metadata

    import metarl_client

    assert metarl_client.__version__ == importlib.metadata.version("metarl-client")
