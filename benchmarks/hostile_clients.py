"""What hostile or careless clients cost the server, each against a baseline measured in the
same run (only the ratios mean anything on a shared, noisy machine).

    .venv/bin/python benchmarks/hostile_clients.py            # ~3 minutes, ~3 GB client RAM
    .venv/bin/python benchmarks/hostile_clients.py --quick    # smaller counts

Each server is a fresh process (``metarl serve`` on 127.0.0.1, bundled policies, adaptations in
a thread: ``--adapt-processes 0``); its memory is read from ``/proc/<pid>/status`` (``VmRSS``
resident now, ``VmHWM`` its peak).

1. Made-up method names (issue 21): N calls without a token, each to a random method name
   (half under the server's own services, half under random services), 100 in flight at a
   time; the ``/metrics`` series count and the server's RSS before and after.
2. Large requests with a wrong token: RSS growth after N concurrent CreateSession calls whose
   body is an M MB string, sent with a wrong token, against the same calls with the right token
   (the server then reads and decodes every body; it answers NOT_FOUND for the policy).
3. Large authenticated requests received at once (issue 21): N concurrent right-token M MB
   CreateSession calls, each on a connection of its own; the server's peak RSS growth
   (``VmHWM``) and its RSS growth a second after, with the default ``--max-receiving-mb``
   against ``--max-receiving-mb 0`` (every body at once, gRPC's growing stream windows: the
   server before issue 21).
4. What the receive slots cost a control loop: unary Act p50 on one session, default against
   ``--max-receiving-mb 0``, the two servers called in alternating rounds.
5. Recording memory: bytes held per recorded transition of a navigation-sized session
   (2-D observations, 2-D actions) at the 10,000-transition limit, measured with
   ``tracemalloc``, against the bytes of the numbers themselves (4 x (2 + 2 + 1)).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metarl_client.proto.metarl.v1 import policy_service_pb2 as pb
from metarl_client.proto.metarl.v1 import policy_service_pb2_grpc as pb_grpc
from metarl_client.tensors import to_tensor
from metarl_server.sessions import Recording
from tests.process_support import spawn_server
from tests.redis_support import free_port


def _status_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _body(mb: int) -> bytes:
    """A CreateSessionRequest whose policy name is ``mb`` MiB of 'a'."""
    size = mb * 2**20
    varint = bytearray()
    while True:  # field 1 (CreateSessionRequest.policy), length-delimited, `size` bytes
        byte, size = size & 0x7F, size >> 7
        varint.append(byte | (0x80 if size else 0))
        if not size:
            break
    return b"\x0a" + bytes(varint) + b"a" * (mb * 2**20)


def _server(tmp: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    tokens = Path(tmp) / "tokens"
    tokens.write_text("right-token\n")
    return spawn_server(
        "--auth-token-file", str(tokens), "--adapt-processes", "0", "--poll-interval", "0", *args
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()


def _series(port: int) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def made_up_names(n: int) -> tuple[tuple[int, int], tuple[float, float], dict[str, int]]:
    """(series before, after), (RSS MB before, after), answers by code, for ``n`` calls."""
    rng = random.Random(0)

    def word() -> str:
        return "".join(rng.choices(string.ascii_letters, k=12))

    own = ("metarl.v1.PolicyService", "metarl.v1.ModelAdminService")
    with tempfile.TemporaryDirectory() as tmp:
        metrics_port = free_port()
        proc, target = _server(tmp, "--metrics-port", str(metrics_port))
        try:
            codes: dict[str, int] = {}
            with grpc.insecure_channel(target) as channel:

                def burst(count: int) -> None:
                    names = [
                        f"/{rng.choice(own) if i % 2 else 'evil.v' + word()}/{word()}"
                        for i in range(count)
                    ]
                    for f in [channel.unary_unary(m).future(b"") for m in names]:
                        try:
                            f.result(timeout=60)
                            code = "OK"
                        except grpc.RpcError as exc:
                            code = exc.code().name
                        codes[code] = codes.get(code, 0) + 1

                burst(2)  # (the `unknown` label's series exist from the first such call)
                series0, rss0 = _series(metrics_port), _status_mb(proc.pid)
                for start in range(0, n, 100):
                    burst(min(100, n - start))
            return (series0, _series(metrics_port)), (rss0, _status_mb(proc.pid)), codes
        finally:
            _stop(proc)


def large_requests(n: int, mb: int, token: str) -> tuple[float, set[str]]:
    """RSS growth (MB) of a fresh server after ``n`` concurrent ``mb``-MB calls with ``token``."""
    with tempfile.TemporaryDirectory() as tmp:
        proc, target = _server(tmp)
        try:
            before = _status_mb(proc.pid)
            body = _body(mb)
            codes: set[str] = set()
            with grpc.insecure_channel(target) as channel:
                call = channel.unary_unary("/metarl.v1.PolicyService/CreateSession")

                def one() -> None:
                    try:
                        call(body, metadata=[("authorization", f"Bearer {token}")], timeout=120)
                    except grpc.RpcError as exc:
                        codes.add(exc.code().name)

                threads = [threading.Thread(target=one) for _ in range(n)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            time.sleep(0.5)
            return _status_mb(proc.pid) - before, codes
        finally:
            _stop(proc)


def received_at_once(n: int, mb: int, *args: str) -> tuple[float, float, dict[str, int]]:
    """(peak RSS growth, RSS growth 1.5 s after) in MB of a fresh server (started with ``args``)
    given ``n`` concurrent right-token ``mb``-MB calls, each on its own connection."""
    with tempfile.TemporaryDirectory() as tmp:
        proc, target = _server(tmp, *args)
        try:
            before = _status_mb(proc.pid)
            body = _body(mb)
            codes: dict[str, int] = {}
            lock = threading.Lock()
            channels = [
                grpc.insecure_channel(target, [("grpc.use_local_subchannel_pool", 1)])
                for _ in range(n)
            ]

            def one(channel: grpc.Channel) -> None:
                call = channel.unary_unary("/metarl.v1.PolicyService/CreateSession")
                try:
                    call(body, metadata=[("authorization", "Bearer right-token")], timeout=300)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                with lock:
                    codes[code] = codes.get(code, 0) + 1

            threads = [threading.Thread(target=one, args=(c,)) for c in channels]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for c in channels:
                c.close()
            time.sleep(1.5)
            peak = _status_mb(proc.pid, "VmHWM") - before
            return peak, _status_mb(proc.pid) - before, codes
        finally:
            _stop(proc)


def act_p50_us(calls: int) -> tuple[float, float]:
    """Unary Act p50 (µs) with the default receive slots, and with ``--max-receiving-mb 0``."""
    with tempfile.TemporaryDirectory() as tmp:
        servers = [_server(tmp), _server(tmp, "--max-receiving-mb", "0")]
        try:
            md = [("authorization", "Bearer right-token")]
            samples: list[list[float]] = [[], []]
            channels = [grpc.insecure_channel(t) for _, t in servers]
            stubs = [pb_grpc.PolicyServiceStub(c) for c in channels]
            requests = []
            for s in stubs:
                sid = s.CreateSession(
                    pb.CreateSessionRequest(policy="cartpole-family"), metadata=md
                ).session.id
                requests.append(
                    pb.ActRequest(session_id=sid, observations=to_tensor(np.zeros(4, np.float32)))
                )
            for _ in range(200):  # warm both
                for s, r in zip(stubs, requests, strict=True):
                    s.Act(r, metadata=md)
            for _ in range(calls // 100):
                for i, (s, r) in enumerate(zip(stubs, requests, strict=True)):
                    for _ in range(100):
                        t0 = time.perf_counter()
                        s.Act(r, metadata=md)
                        samples[i].append(time.perf_counter() - t0)
            for c in channels:
                c.close()
            gated, ungated = (statistics.median(x) * 1e6 for x in samples)
            return gated, ungated
        finally:
            for proc, _ in servers:
                _stop(proc)


def recording_bytes(transitions: int = 10_000) -> float:
    rng = np.random.default_rng(0)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    rec = Recording(transitions)
    for _ in range(transitions):
        rec.step(
            rng.standard_normal(2).astype(np.float32), rng.standard_normal(2).astype(np.float32)
        )
        rec.feedback(float(rng.standard_normal()), False, False)
        rec.journal.clear()  # (as every store does once it has saved the step)
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert rec.transitions == transitions
    return held / transitions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--names", type=int, default=None, help="made-up method names to call")
    parser.add_argument(
        "--only",
        default="names,wrong,bodies,act,recording",
        help="the parts to run, comma-separated (names, wrong, bodies, act, recording)",
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    n, mb = (8, 20) if args.quick else (24, 60)
    names = args.names or (10_000 if args.quick else 100_000)

    if "names" in only:
        made_up_report(names)
    if "wrong" in only:
        wrong_token_report(n, mb)
    if "bodies" in only:
        bodies_report(n, mb)
    if "act" in only:
        gated, ungated = act_p50_us(1000 if args.quick else 4000)
        print(f"unary Act p50: {gated:.0f} us with the receive slots, {ungated:.0f} us without")
        print(f"  ratio: {gated / ungated:.3f}")
    if "recording" in only:
        recording_report()


def made_up_report(names: int) -> None:
    (s0, s1), (r0, r1), codes = made_up_names(names)
    print(f"{names:,} calls without a token to random method names ({codes}):")
    print(f"  /metrics series: {s0} before, {s1} after (ratio {s1 / s0:.3f})")
    print(f"  server RSS: {r0:.1f} MB before, {r1:.1f} MB after ({r1 - r0:+.1f} MB)")


def wrong_token_report(n: int, mb: int) -> None:
    wrong, wrong_codes = large_requests(n, mb, "wrong-token")
    right, right_codes = large_requests(n, mb, "right-token")
    print(f"{n} concurrent {mb} MB CreateSession calls, server RSS growth:")
    print(f"  wrong token (refused before reading): {wrong:8.1f} MB  {sorted(wrong_codes)}")
    print(f"  right token (read and decoded):       {right:8.1f} MB  {sorted(right_codes)}")
    print(f"  ratio wrong/right: {wrong / right:.3f}")


def bodies_report(n: int, mb: int) -> None:
    print(f"{n} concurrent right-token {mb} MB calls, one connection each, server RSS growth:")
    bounded = received_at_once(n, mb)
    unbounded = received_at_once(n, mb, "--max-receiving-mb", "0")
    for label, (peak, after, answers) in (
        ("--max-receiving-mb 128 (default)", bounded),
        ("--max-receiving-mb 0 (unbounded)", unbounded),
    ):
        print(f"  {label}: peak {peak:7.1f} MB, after {after:7.1f} MB  {answers}")
    print(
        f"  ratio bounded/unbounded: peak {bounded[0] / unbounded[0]:.3f}, "
        f"after {bounded[1] / unbounded[1]:.3f}"
    )
    print(f"  (load average {os.getloadavg()[0]:.1f}: the unbounded peak grows with how many")
    print("   bodies arrive at once, which a busy machine's client threads make fewer)")


def recording_report() -> None:
    per = recording_bytes()
    raw = 4 * (2 + 2 + 1)
    print(f"recording, 2-D observations and actions, 10,000 transitions: {per:.0f} bytes each")
    print(f"  against the numbers' own {raw} bytes: {per / raw:.1f}x")
    print(f"  so a session at the limit holds ~{per * 10_000 / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
