"""What hostile or careless clients cost the server, each against a baseline measured in the
same run (only the ratios mean anything on a shared, noisy machine).

    .venv/bin/python benchmarks/hostile_clients.py            # ~1 minute, ~1.5 GB client RAM
    .venv/bin/python benchmarks/hostile_clients.py --quick    # 8 requests of 20 MB

1. Large requests with a wrong token: the serving process's resident memory (``VmRSS``) after
   N concurrent CreateSession calls whose body is an M MB string, sent with a wrong token,
   against the same calls with the right token (the server then reads and decodes every body,
   as it did for every call before issue 15; it answers NOT_FOUND for the policy). Each in a
   fresh server process (``metarl serve`` on 127.0.0.1, bundled policies).
2. Recording memory: bytes held per recorded transition of a navigation-sized session
   (2-D observations, 2-D actions) at the 10,000-transition limit, measured with
   ``tracemalloc``, against the bytes of the numbers themselves (4 x (2 + 2 + 1)).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metarl_server.sessions import Recording
from tests.process_support import spawn_server


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def large_requests(n: int, mb: int, token: str) -> tuple[float, set[str]]:
    """RSS growth (MB) of a fresh server after ``n`` concurrent ``mb``-MB calls with ``token``."""
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "tokens"
        tokens.write_text("right-token\n")
        proc, target = spawn_server(
            "--auth-token-file", str(tokens), "--adapt-processes", "0", "--poll-interval", "0"
        )
        try:
            before = _rss_mb(proc.pid)
            size = mb * 2**20
            varint = bytearray()
            while True:  # field 1 (CreateSessionRequest.policy), length-delimited, `size` bytes
                byte, size = size & 0x7F, size >> 7
                varint.append(byte | (0x80 if size else 0))
                if not size:
                    break
            body = b"\x0a" + bytes(varint) + b"a" * (mb * 2**20)
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
            return _rss_mb(proc.pid) - before, codes
        finally:
            proc.kill()
            proc.wait()


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
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert rec.transitions == transitions
    return held / transitions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, mb = (8, 20) if args.quick else (24, 60)
    wrong, wrong_codes = large_requests(n, mb, "wrong-token")
    right, right_codes = large_requests(n, mb, "right-token")
    print(f"{n} concurrent {mb} MB CreateSession calls, server RSS growth:")
    print(f"  wrong token (refused before reading): {wrong:8.1f} MB  {sorted(wrong_codes)}")
    print(f"  right token (read and decoded):       {right:8.1f} MB  {sorted(right_codes)}")
    print(f"  ratio wrong/right: {wrong / right:.3f}")
    per = recording_bytes()
    raw = 4 * (2 + 2 + 1)
    print(f"recording, 2-D observations and actions, 10,000 transitions: {per:.0f} bytes each")
    print(f"  against the numbers' own {raw} bytes: {per / raw:.1f}x")
    print(f"  so a session at the limit holds ~{per * 10_000 / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
