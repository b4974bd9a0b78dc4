"""Serving latency, throughput, adaptation time and memory, each against a baseline measured in
the same run on the same machine (only the ratios mean anything on a shared, noisy machine).

    .venv/bin/python benchmarks/serve_latency.py            # full run (~3 minutes)
    .venv/bin/python benchmarks/serve_latency.py --quick    # smaller counts (~1 minute)

What is measured, with the client in this process and each server in its own process
(``python -m metarl_server``, and a bare gRPC echo server with the same thread pool and the same
message types, whose handlers return the request):

- Act p50/p99: one observation, sampled action, against unary echo of an ActRequest.
- StreamAct per step: send one observation, wait for its action, on one open stream, against a
  bidirectional echo stream.
- The same two through the SDK (``metarl_client.PolicyClient``): ``session.act(obs)``, and
  ``loop.act(obs)`` on ``session.stream()``, against the same echo baselines (the SDK's own
  cost: validation, the request and response conversions, the stream's hand-offs), with this
  process's CPU time per call beside the raw stub's.
- QPS with 16 calls in flight (16 sessions, asyncio client), against echo with 16 in flight.
- Adapt of 20 episodes x 100 steps (one inner step, from θ: the session is reset, untimed,
  before each) over gRPC, against the same adaptation in this process
  (``metarl.core.inner_loop.prepare(pad_episodes(...))`` + ``adapt``, 1 torch thread as in the
  server's worker).
- RSS of the serving process holding N adapted sessions (every session has its own θ'),
  against the policy's parameter bytes; the adaptation worker's RSS is reported beside it.

The policy is the 2D-navigation one (MLP 64-64 tanh, 2-D observations, 2-D gaussian actions,
the issue's reference size) with random parameters written by
``metarl.core.checkpoint.save_checkpoint``; ``--bundled`` serves the bundled ``navigation-2d``
checkpoint instead (trained, MLP 32-32). The server serves that one checkpoint only.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from metarl_client import PolicyClient
from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.proto.metarl.v1 import policy_service_pb2_grpc as pb_grpc
from metarl_client.tensors import to_tensor

ROOT = Path(__file__).resolve().parent.parent
ECHO = "bench.Echo"


# -- the baseline: a bare echo server ------------------------------------------------------------


def run_echo_server() -> None:
    def unary(request: Any, context: Any) -> Any:
        return request

    def bidi(requests: Iterator[Any], context: Any) -> Iterator[Any]:
        yield from requests

    handler = grpc.method_handlers_generic_handler(
        ECHO,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(
                unary, pb.ActRequest.FromString, pb.ActRequest.SerializeToString
            ),
            "Bidi": grpc.stream_stream_rpc_method_handler(
                bidi, pb.StreamActRequest.FromString, pb.StreamActRequest.SerializeToString
            ),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening on port {port}", flush=True)
    server.wait_for_termination()


def start(cmd: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on port" not in line:
        proc.kill()
        raise RuntimeError(f"{cmd} did not start: {line!r}")
    return proc, int(line.rsplit(" ", 1)[1])


def wait_serving(channel: grpc.Channel, timeout: float = 120) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while health.Check(health_pb2.HealthCheckRequest()).status != 1:  # SERVING
        if time.monotonic() > deadline:
            raise RuntimeError("the policy server never became SERVING")
        time.sleep(0.2)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


# -- the policy ----------------------------------------------------------------------------------


def navigation_model_dir(tmp: Path, bundled: bool = False) -> tuple[Path, str]:
    """A model directory holding a ``navigation-2d`` checkpoint: by default one with the
    reference architecture (MLP 64-64 tanh, 2-D gaussian actions) and random θ, written by
    ``metarl.core.checkpoint.save_checkpoint`` (the values do not change the cost of a call); with
    ``bundled``, the bundled checkpoint (trained, but a smaller MLP, 32-32)."""
    if bundled:
        return ROOT / "metarl" / "data" / "checkpoints", "bundled navigation-2d"
    import torch

    from metarl.core import policies
    from metarl.core.checkpoint import Checkpoint, save_checkpoint
    from metarl.core.inner_loop import InnerLoopConfig
    from metarl.core.policies import PolicySpec

    spec = PolicySpec(obs_dim=2, action_dim=2, distribution="gaussian", hidden_sizes=(64, 64))
    params = policies.init_params(spec, torch.Generator().manual_seed(0))
    ckpt = Checkpoint(
        "navigation-2d", "1", "metarl/Navigation2D-v0", spec, InnerLoopConfig(lr=0.1), params
    )
    save_checkpoint(ckpt, tmp / "navigation-2d" / "1")
    return tmp, "navigation-2d, MLP 64-64 tanh (random θ)"


def parameter_count(checkpoint: Path) -> int:
    import json

    spec = json.loads((checkpoint / "manifest.json").read_text())["policy"]
    sizes = [spec["obs_dim"], *spec["hidden_sizes"], spec["action_dim"]]
    n = sum((a + 1) * b for a, b in itertools.pairwise(sizes))
    return n + (spec["action_dim"] if spec["distribution"] == "gaussian" else 0)


def nav_checkpoint(model_dir: Path) -> Path:
    """The navigation-2d checkpoint directory (the newest version) under ``model_dir``."""
    return sorted(m.parent for m in model_dir.glob("navigation-2d/*/manifest.json"))[-1]


def nav_episodes(n: int, steps: int, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(seed)
    return [
        (
            rng.uniform(-0.5, 0.5, size=(steps, 2)).astype(np.float32),
            rng.normal(size=(steps, 2)).astype(np.float32) * 0.1,
            -rng.uniform(0, 1, size=steps).astype(np.float32),
        )
        for _ in range(n)
    ]


def episodes_proto(eps: list[tuple[np.ndarray, ...]]) -> list[pb.Episode]:
    return [
        pb.Episode(
            observations=to_tensor(o), actions=to_tensor(a), rewards=to_tensor(r), terminated=True
        )
        for o, a, r in eps
    ]


# -- measurements --------------------------------------------------------------------------------


def timed(call: Callable[[], Any], n: int) -> np.ndarray:
    out = np.empty(n)
    for i in range(n):
        t = time.perf_counter()
        call()
        out[i] = time.perf_counter() - t
    return out


def interleaved(
    calls: dict[str, Callable[[], Any]],
    n: int,
    rounds: int = 20,
    cpu: tuple[dict[str, float], dict[str, int]] | None = None,
) -> dict[str, Any]:
    """Alternates the candidates in rounds so that slow phases of the machine hit all of them;
    with ``cpu`` (totals, server pids) also adds up each server's CPU time per call."""
    for call in calls.values():
        timed(call, 200)  # warm up
    parts: dict[str, list[np.ndarray]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, call in calls.items():
            before = cpu_seconds(cpu[1][k]) if cpu else 0.0
            parts[k].append(timed(call, n // rounds))
            if cpu:
                cpu[0][k] += (cpu_seconds(cpu[1][k]) - before) / n
    return {k: np.concatenate(v) for k, v in parts.items()}


def sdk_stream_steps(session: Any, obs: np.ndarray, n: int) -> np.ndarray:
    """``loop.act(obs)`` timed per step on one ``session.stream()``."""
    out = np.empty(n)
    with session.stream() as loop:
        for i in range(n):
            t = time.perf_counter()
            loop.act(obs)
            out[i] = time.perf_counter() - t
    return out[min(20, n // 5) :]  # drop the warm-up steps


def stream_steps(open_stream: Callable[[Iterator[Any]], Iterator[Any]], msgs: list[Any]) -> Any:
    q: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def requests() -> Iterator[Any]:
        while (m := q.get()) is not None:
            yield m

    responses = open_stream(requests())
    out = np.empty(len(msgs))
    for i, m in enumerate(msgs):
        t = time.perf_counter()
        q.put(m)
        next(responses)
        out[i] = time.perf_counter() - t
    q.put(None)
    for _ in responses:
        pass
    return out[min(20, len(msgs) // 5) :]  # drop the warm-up steps


async def qps(target: str, make: Callable[[grpc.aio.Channel], Callable[[int], Any]], seconds: float
              ) -> float:  # fmt: skip
    async with grpc.aio.insecure_channel(target) as channel:
        call = make(channel)
        for i in range(16):
            await call(i)
        count = 0
        end = time.perf_counter() + seconds

        async def worker(i: int) -> None:
            nonlocal count
            while time.perf_counter() < end:
                await call(i)
                count += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(16)))
        return count / (time.perf_counter() - start)


async def create_adapted(target: str, n: int, policy: str, eps: list[pb.Episode]) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.PolicyServiceStub(channel)
        next_i = 0

        async def worker() -> None:
            nonlocal next_i
            while next_i < n:
                next_i += 1
                sess = await stub.CreateSession(pb.CreateSessionRequest(policy=policy))
                await stub.Adapt(pb.AdaptRequest(session_id=sess.session.id, episodes=eps))

        await asyncio.gather(*(worker() for _ in range(32)))


def in_process_adapt(
    model_dir: Path, eps: list[tuple[np.ndarray, ...]], n: int, with_stats: bool = False
) -> np.ndarray:
    """The trainer's adaptation (``prepare(pad_episodes)`` + ``adapt``) in this process; with
    ``with_stats`` what an Adapt computes (also the loss before and after: the worker's
    function, called here)."""
    import torch

    from metarl.core import inner_loop
    from metarl.core.checkpoint import load_checkpoint
    from metarl_server import worker

    torch.set_num_threads(1)
    key = f"{model_dir}:{with_stats}"
    if with_stats and key not in _CACHE:
        lc = worker.load(nav_checkpoint(model_dir))
        job = worker.AdaptJob(lc.spec, lc.inner_loop, lc.learning_rates, lc.params, eps, 1)  # type: ignore[arg-type]
        _CACHE[key] = lambda: worker.adapt(job)
        timed(_CACHE[key], 5)
    if key not in _CACHE:
        ckpt = load_checkpoint(nav_checkpoint(model_dir))
        teps = [tuple(torch.from_numpy(x) for x in e) for e in eps]

        def run() -> None:
            batch = inner_loop.prepare(inner_loop.pad_episodes(teps), ckpt.inner_loop)  # type: ignore[arg-type]
            inner_loop.adapt(ckpt.spec, ckpt.params, batch, lr=ckpt.inner_loop.lr, steps=1)

        timed(run, 5)  # warm up (torch.func's first call)
        _CACHE[key] = run
    return timed(_CACHE[key], n)


_CACHE: dict[str, Callable[[], None]] = {}


# -- the run -------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller counts")
    ap.add_argument("--calls", type=int, default=5000, help="unary calls per candidate")
    ap.add_argument("--steps", type=int, default=3000, help="stream steps per candidate")
    ap.add_argument("--qps-seconds", type=float, default=5.0)
    ap.add_argument("--adapts", type=int, default=30)
    ap.add_argument("--sessions", type=int, default=10_000, help="adapted sessions for RSS")
    ap.add_argument(
        "--bundled", action="store_true", help="the bundled navigation-2d checkpoint (MLP 32-32)"
    )
    ap.add_argument(
        "--latency-only", action="store_true", help="Act, StreamAct and QPS only (no Adapt, RSS)"
    )
    ap.add_argument("--server-args", default="", help="extra options for the policy server")
    ap.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo_server:
        run_echo_server()
        return
    if args.quick:
        args.calls, args.steps, args.qps_seconds, args.adapts, args.sessions = (
            2000, 1000, 2.0, 10, 2000,
        )  # fmt: skip

    tmp = Path(tempfile.mkdtemp(prefix="metarl-bench-"))
    model_dir, model_label = navigation_model_dir(tmp, args.bundled)
    echo_proc, echo_port = start([sys.executable, __file__, "--echo-server"])
    server_proc, port = start(
        [sys.executable, "-m", "metarl_server", "--host", "127.0.0.1", "--port", "0",
         "--checkpoint", str(nav_checkpoint(model_dir)), "--max-sessions", str(args.sessions + 100),
         "--metrics-port", "0", "--log-level", "WARNING",
         *args.server_args.split()],
    )  # fmt: skip
    rows: list[tuple[str, str, str, str, str]] = []
    try:
        target, echo_target = f"127.0.0.1:{port}", f"127.0.0.1:{echo_port}"
        channel, echo_channel = grpc.insecure_channel(target), grpc.insecure_channel(echo_target)
        wait_serving(channel)
        stub = pb_grpc.PolicyServiceStub(channel)
        policy = "navigation-2d"
        rss_idle = rss_mb(server_proc.pid)

        # Act against unary echo
        sid = stub.CreateSession(pb.CreateSessionRequest(policy=policy, seed=0)).session.id
        obs = np.array([0.1, -0.2], np.float32)
        act_req = pb.ActRequest(session_id=sid, observations=to_tensor(obs))
        echo_unary = echo_channel.unary_unary(
            f"/{ECHO}/Unary", pb.ActRequest.SerializeToString, pb.ActRequest.FromString
        )
        client = PolicyClient(target)
        sdk_session = client.create_session(policy, seed=0)
        cpu = {"act": 0.0, "echo": 0.0, "sdk": 0.0}
        pids = {"act": server_proc.pid, "echo": echo_proc.pid, "sdk": server_proc.pid}
        own = {"act": 0.0, "echo": 0.0, "sdk": 0.0}  # this process's CPU per call

        def own_cpu(name: str, call: Callable[[], Any]) -> Callable[[], Any]:
            def run() -> Any:
                t = time.process_time()
                out = call()
                own[name] += time.process_time() - t
                return out

            return run

        lat = interleaved(
            {
                "act": own_cpu("act", lambda: stub.Act(act_req)),
                "echo": own_cpu("echo", lambda: echo_unary(act_req)),
                "sdk": own_cpu("sdk", lambda: sdk_session.act(obs)),
            },
            args.calls,
            cpu=(cpu, pids),
        )
        calls_made = args.calls + 200  # (with the warm-up's)
        for q, target_ratio in ((50, 1.15), (99, None)):
            a, e = np.percentile(lat["act"], q) * 1e6, np.percentile(lat["echo"], q) * 1e6
            rows.append((f"Act p{q}", f"{a:.0f} µs", f"{e:.0f} µs", f"{a / e:.2f}",
                         f"≤ {target_ratio}" if target_ratio else "-"))  # fmt: skip
        for q, target_ratio in ((50, 1.15), (99, None)):
            a, e = np.percentile(lat["sdk"], q) * 1e6, np.percentile(lat["echo"], q) * 1e6
            rows.append((f"SDK session.act p{q}", f"{a:.0f} µs", f"{e:.0f} µs", f"{a / e:.2f}",
                         f"≤ {target_ratio}" if target_ratio else "-"))  # fmt: skip

        ca, ce = cpu["act"] * 1e6, cpu["echo"] * 1e6
        rows.append(("  server CPU per Act (all threads)", f"{ca:.0f} µs", f"{ce:.0f} µs",
                     f"{ca / ce:.2f}", "≤ 1.15"))  # fmt: skip
        oa, os_, oe = (own[k] / calls_made * 1e6 for k in ("act", "sdk", "echo"))
        rows.append(("  client CPU per Act, raw stub", f"{oa:.0f} µs", f"{oe:.0f} µs",
                     f"{oa / oe:.2f}", "-"))  # fmt: skip
        rows.append(("  client CPU per Act, SDK", f"{os_:.0f} µs", f"{oe:.0f} µs",
                     f"{os_ / oe:.2f}", "-"))  # fmt: skip

        # StreamAct against bidi echo
        first = pb.StreamActRequest(session_id=sid, observation=to_tensor(obs))
        later = pb.StreamActRequest(observation=to_tensor(obs))
        msgs = [first] + [later] * (args.steps - 1)
        echo_bidi = echo_channel.stream_stream(
            f"/{ECHO}/Bidi", pb.StreamActRequest.SerializeToString, pb.StreamActRequest.FromString
        )
        s_parts: list[np.ndarray] = []
        e_parts: list[np.ndarray] = []
        k_parts: list[np.ndarray] = []
        spent = {"raw": 0.0, "echo": 0.0, "sdk": 0.0}
        chunk = msgs[: max(100, len(msgs) // 10)]
        for _ in range(max(1, len(msgs) // len(chunk))):  # alternate, against load changes
            t = time.process_time()
            s_parts.append(stream_steps(stub.StreamAct, chunk))
            spent["raw"] += time.process_time() - t
            t = time.process_time()
            e_parts.append(stream_steps(echo_bidi, chunk))
            spent["echo"] += time.process_time() - t
            t = time.process_time()
            k_parts.append(sdk_stream_steps(sdk_session, obs, len(chunk)))
            spent["sdk"] += time.process_time() - t
        s50, e50, k50 = (
            np.median(np.concatenate(parts)) * 1e6 for parts in (s_parts, e_parts, k_parts)
        )
        rows.append(("StreamAct per step (p50)", f"{s50:.0f} µs", f"{e50:.0f} µs",
                     f"{s50 / e50:.2f}", "≤ 1.15"))  # fmt: skip
        rows.append(("SDK loop.act on session.stream() (p50)", f"{k50:.0f} µs", f"{e50:.0f} µs",
                     f"{k50 / e50:.2f}", "≤ 1.15"))  # fmt: skip
        n_steps = len(chunk) * len(s_parts)
        rs, ks, es = (spent[k] / n_steps * 1e6 for k in ("raw", "sdk", "echo"))
        rows.append(("  client CPU per step, raw stub", f"{rs:.0f} µs", f"{es:.0f} µs",
                     f"{rs / es:.2f}", "-"))  # fmt: skip
        rows.append(("  client CPU per step, SDK", f"{ks:.0f} µs", f"{es:.0f} µs",
                     f"{ks / es:.2f}", "-"))  # fmt: skip

        # QPS, 16 in flight
        sessions = [
            stub.CreateSession(pb.CreateSessionRequest(policy=policy, seed=i)).session.id
            for i in range(16)
        ]
        reqs = [pb.ActRequest(session_id=s, observations=to_tensor(obs)) for s in sessions]

        def act_call(ch: grpc.aio.Channel) -> Callable[[int], Any]:
            m = ch.unary_unary(
                "/metarl.v1.PolicyService/Act", pb.ActRequest.SerializeToString,
                pb.ActResponse.FromString,
            )  # fmt: skip
            return lambda i: m(reqs[i])

        def echo_call(ch: grpc.aio.Channel) -> Callable[[int], Any]:
            m = ch.unary_unary(
                f"/{ECHO}/Unary", pb.ActRequest.SerializeToString, pb.ActRequest.FromString
            )
            return lambda i: m(reqs[i])

        q_act, q_echo = [], []
        for _ in range(8):  # alternating windows; the ratio is the median of the pairs'
            q_act.append(asyncio.run(qps(target, act_call, args.qps_seconds / 8)))
            q_echo.append(asyncio.run(qps(echo_target, echo_call, args.qps_seconds / 8)))
        qa, qe = float(np.median(q_act)), float(np.median(q_echo))
        ratio = float(np.median(np.array(q_act) / np.array(q_echo)))
        rows.append(("QPS, 16 sessions in flight", f"{qa:.0f}/s", f"{qe:.0f}/s",
                     f"{ratio:.2f}", "≥ 0.8"))  # fmt: skip

        if args.latency_only:
            return print_rows(model_label, rows)

        # Adapt, 20 episodes x 100 steps
        eps = nav_episodes(20, 100)
        adapt_req = pb.AdaptRequest(session_id=sid, episodes=episodes_proto(eps), steps=1)
        reset = pb.ResetSessionRequest(session_id=sid)
        for _ in range(3):
            stub.ResetSession(reset)
            stub.Adapt(adapt_req)
        served, inside, local, local_stats = [], [], [], []
        for _ in range(args.adapts):  # alternate, against load changes
            stub.ResetSession(reset)  # every adaptation starts from θ, as in process
            t = time.perf_counter()
            resp = stub.Adapt(adapt_req)
            served.append(time.perf_counter() - t)
            inside.append(resp.stats.duration_seconds)
            local.append(in_process_adapt(model_dir, eps, 1)[0])
            local_stats.append(in_process_adapt(model_dir, eps, 1, with_stats=True)[0])
        sa, la = np.median(served) * 1e3, np.median(local) * 1e3
        ls = np.median(local_stats) * 1e3
        rows.append(("Adapt 20 ep x 100 steps (p50)", f"{sa:.1f} ms", f"{la:.1f} ms in process",
                     f"{sa / la:.2f}", "≤ 1.5"))  # fmt: skip
        rows.append(("  the same with Adapt's loss stats", f"{sa:.1f} ms",
                     f"{ls:.1f} ms in process", f"{sa / ls:.2f}", "-"))  # fmt: skip
        rows.append(("  of which in the server (p50)", f"{np.median(inside) * 1e3:.1f} ms",
                     "(handler start to end)", "-", "-"))  # fmt: skip

        # RSS with N adapted sessions
        sdk_session.close()
        client.close()
        for s in [sid, *sessions]:
            stub.DeleteSession(pb.DeleteSessionRequest(session_id=s))
        small = episodes_proto(nav_episodes(1, 10, seed=1))
        t = time.perf_counter()
        asyncio.run(create_adapted(target, args.sessions, policy, small))
        took = time.perf_counter() - t
        rss_full = rss_mb(server_proc.pid)
        param_mb = parameter_count(nav_checkpoint(model_dir)) * 4 * args.sessions / 2**20
        worker_rss = sum(rss_mb(c) for c in children(server_proc.pid))
        rows.append((f"RSS, {args.sessions} adapted sessions", f"{rss_full:.0f} MB",
                     f"{rss_idle:.0f} MB idle + {param_mb:.0f} MB of θ'",
                     f"{(rss_full - rss_idle) * 1024 / args.sessions:.1f} KB/session",
                     "≤ 400 MB"))  # fmt: skip
        rows.append(("  adaptation worker RSS", f"{worker_rss:.0f} MB", "(torch)", "-", "-"))
        print(f"(created and adapted {args.sessions} sessions in {took:.0f} s)", file=sys.stderr)
    finally:
        server_proc.terminate()
        echo_proc.terminate()
        server_proc.wait(30)
        echo_proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)

    print_rows(model_label, rows)


def print_rows(model_label: str, rows: list[tuple[str, str, str, str, str]]) -> None:
    print(f"\nmetarl serve_latency — policy: {model_label}; {os.cpu_count()} CPUs\n")
    header = ("figure", "metarl", "baseline", "ratio", "target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


if __name__ == "__main__":
    main()
