"""Load test: concurrent clients mixing CreateSession/Act/StreamAct/Adapt/DeleteSession.

For each session store (in-memory, then Redis: a throwaway redis-server unless --redis-url),
starts `metarl serve` as its own process on a free loopback port, runs --clients client threads
spread over --procs processes for --seconds, and prints per-RPC counts, errors and p50/p99
latencies, with Redis's p50 as a ratio of memory's from the same run. Requests go to 127.0.0.1
only.

    .venv/bin/python benchmarks/load.py                     # memory, then Redis; 60 s each
    .venv/bin/python benchmarks/load.py --stores memory --seconds 10
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.proto.metarl.v1 import policy_service_pb2_grpc as pb_grpc
from metarl_client.tensors import to_tensor

POLICY = "cartpole-family"


def _episodes(rng: np.random.Generator, n: int, length: int) -> list[pb.Episode]:
    return [
        pb.Episode(
            observations=to_tensor(rng.normal(0, 0.05, (length, 4)).astype(np.float32)),
            actions=to_tensor(rng.integers(0, 2, length)),
            rewards=to_tensor(np.ones(length, np.float32)),
            terminated=True,
        )
        for _ in range(n)
    ]


def client_loop(target: str, seconds: float, seed: int) -> dict[str, list]:  # type: ignore[type-arg]
    """One client: sessions that act step by step, stream, adapt, and get deleted."""
    rng = np.random.default_rng(seed)
    lat: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, list[str]] = defaultdict(list)
    channel = grpc.insecure_channel(target)
    stub = pb_grpc.PolicyServiceStub(channel)
    deadline = time.monotonic() + seconds

    def timed(name: str, fn, *args):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            out = fn(*args, timeout=30)
            lat[name].append(time.perf_counter() - start)
            return out
        except grpc.RpcError as exc:
            errors[name].append(f"{exc.code().name}: {exc.details()}")
            return None

    while time.monotonic() < deadline:
        created = timed(
            "CreateSession",
            stub.CreateSession,
            pb.CreateSessionRequest(policy=POLICY, seed=int(rng.integers(2**31))),
        )
        if created is None:
            continue
        sid = created.session.id
        for _ in range(20):
            obs = rng.normal(0, 0.05, 4).astype(np.float32)
            timed("Act", stub.Act, pb.ActRequest(session_id=sid, observations=to_tensor(obs)))

        def stream_requests(sid: str = sid):  # type: ignore[no-untyped-def]
            for i in range(20):
                req = pb.StreamActRequest(
                    observation=to_tensor(rng.normal(0, 0.05, 4).astype(np.float32))
                )
                if i == 0:
                    req.session_id = sid
                else:
                    req.feedback.reward = 1.0
                yield req

        start = time.perf_counter()
        try:
            n = sum(1 for _ in stub.StreamAct(stream_requests(), timeout=30))
            lat["StreamAct(20 steps)"].append(time.perf_counter() - start)
            assert n == 20
        except grpc.RpcError as exc:
            errors["StreamAct(20 steps)"].append(f"{exc.code().name}: {exc.details()}")
        timed("Adapt", stub.Adapt, pb.AdaptRequest(session_id=sid, episodes=_episodes(rng, 5, 40)))
        timed(
            "Act",
            stub.Act,
            pb.ActRequest(
                session_id=sid,
                observations=to_tensor(rng.normal(0, 0.05, (16, 4)).astype(np.float32)),
                deterministic=True,
            ),
        )
        timed("DeleteSession", stub.DeleteSession, pb.DeleteSessionRequest(session_id=sid))
    channel.close()
    return {"lat": dict(lat), "errors": dict(errors)}


def process_main(target: str, seconds: float, threads: int, seed: int) -> dict[str, list]:  # type: ignore[type-arg]
    with ThreadPoolExecutor(threads) as pool:
        results = list(
            pool.map(lambda i: client_loop(target, seconds, seed * 1000 + i), range(threads))
        )
    lat: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, list[str]] = defaultdict(list)
    for r in results:
        for k, v in r["lat"].items():
            lat[k] += v
        for k, v in r["errors"].items():
            errors[k] += v
    return {"lat": dict(lat), "errors": dict(errors)}


def start_server(serve_args: str) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable,
        "-m",
        "metarl.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *shlex.split(serve_args),
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on port" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    target = f"127.0.0.1:{int(line.rsplit(' ', 1)[1])}"
    wait_until_serving(target)
    return proc, target


def wait_until_serving(target: str, timeout: float = 120.0) -> None:
    """The server binds first and loads its policies after; health says when it is ready."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise SystemExit(f"{target} did not become SERVING within {timeout:.0f} s")


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway redis-server on a free loopback port (scripts/ensure-redis.sh installs it)."""
    import shutil
    import socket

    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is missing: run scripts/ensure-redis.sh")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def run(target: str, seconds: float, clients: int, procs: int) -> dict[str, dict[str, float]]:
    per_proc = [clients // procs + (i < clients % procs) for i in range(procs)]
    with mp.get_context("spawn").Pool(procs) as pool:
        parts = pool.starmap(
            process_main, [(target, seconds, n, i) for i, n in enumerate(per_proc)]
        )
    lat: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, list[str]] = defaultdict(list)
    for part in parts:
        for k, v in part["lat"].items():
            lat[k] += v
        for k, v in part["errors"].items():
            errors[k] += v
    rows: dict[str, dict[str, float]] = {}
    for name in sorted(set(lat) | set(errors)):
        ms = np.array(lat.get(name, [float("nan")])) * 1000
        rows[name] = {
            "ok": len(lat.get(name, [])),
            "errors": len(errors.get(name, [])),
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
        }
    for name, msgs in errors.items():
        print(f"  errors in {name}: {msgs[:3]}", file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--stores",
        default="memory,redis",
        help="session stores to measure, in turn, against a fresh server each",
    )
    ap.add_argument("--redis-url", default="", help="Redis to use; empty starts a throwaway one")
    ap.add_argument("--serve-args", default="", help="extra `metarl serve` arguments")
    ap.add_argument("--seconds", type=float, default=60.0, help="duration per store")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients in all")
    ap.add_argument("--procs", type=int, default=4, help="client processes")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    results: dict[str, dict[str, dict[str, float]]] = {}
    redis_proc = None
    try:
        for store in args.stores.split(","):
            url = "memory"
            if store == "redis":
                if args.redis_url:
                    url = args.redis_url
                else:
                    redis_proc, url = start_redis()
            proc, target = start_server(f"--session-store {url} {args.serve_args}")
            try:
                results[store] = run(target, args.seconds, args.clients, args.procs)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    finally:
        if redis_proc is not None:
            redis_proc.kill()
    total_errors = int(sum(r["errors"] for rows in results.values() for r in rows.values()))
    if args.json:
        print(
            json.dumps(
                {
                    "clients": args.clients,
                    "seconds": args.seconds,
                    "results": results,
                    "errors": total_errors,
                }
            )
        )
    else:
        print(f"{args.clients} clients for {args.seconds:.0f} s per store, {os.cpu_count()} CPUs")
        stores = list(results)
        head = "".join(f"{s + ' ok':>12}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}" for s in stores)
        print(f"{'rpc':<22}{head}" + ("   p50 ratio" if len(stores) == 2 else ""))
        for name in sorted({n for rows in results.values() for n in rows}):
            line = f"{name:<22}"
            for s in stores:
                r = results[s].get(
                    name, {"ok": 0, "errors": 0, "p50_ms": float("nan"), "p99_ms": float("nan")}
                )
                line += f"{r['ok']:>12.0f}{r['errors']:>8.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            if len(stores) == 2 and name in results[stores[0]] and name in results[stores[1]]:
                ratio = results[stores[1]][name]["p50_ms"] / results[stores[0]][name]["p50_ms"]
                line += f"   {ratio:>6.2f}x"
            print(line)
        print(f"total errors: {total_errors}")
    sys.exit(1 if total_errors else 0)


if __name__ == "__main__":
    main()
