"""What recording costs on the Redis session store: appending each step (now) against rewriting
the whole recording every step (before issue 15), measured in the same run.

    .venv/bin/python benchmarks/redis_recording.py           # ~1.5 minutes
    .venv/bin/python benchmarks/redis_recording.py --quick   # 1k steps only, shorter phases

Needs redis-server (scripts/ensure-redis.sh); a throwaway one on a free loopback port.

1. Per recorded step, at 1k and 10k recorded steps (CartPole: 4-D observations, episodes of
   200 steps): the store's ``save_recording`` (one RPUSH of the step's events) against its full
   revision-checked write (``save``: the whole recording as JSON, what every step cost before).
   Appends are folded into the stored recording every ``compact_after`` events; that cost,
   amortized per step, is printed too.
2. Another client's Act latency (unary, one observation, deterministic) while 4 recording
   StreamAct streams run on sessions that already hold N recorded steps, against the same Act
   with no streams and with 4 streams that do not record; then with the streams recording
   through the full rewrite (the old way).
   Server and clients share this process (one GIL), the same in every phase.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metarl_client import PolicyClient
from metarl_server.app import ServeConfig, build_registry, create_server
from metarl_server.redis_store import RedisSessionStore
from metarl_server.sessions import Session
from tests.redis_support import RedisServer

POLICY = "cartpole-family"


def fill(s: Session, steps: int, rng: np.random.Generator) -> None:
    """``steps`` rewarded steps into ``s``'s recording (episodes of 200)."""
    rec = s.recording
    assert rec is not None
    with s.lock:
        for i in range(steps):
            rec.step(rng.normal(size=4).astype(np.float32), np.array(i % 2, np.int64))
            rec.feedback(1.0, (i + 1) % 200 == 0, False)


def per_step(store: RedisSessionStore, s: Session, n: int, write: Any) -> float:
    """Mean seconds per recorded step with ``write`` persisting it."""
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    for _ in range(n):
        fill(s, 1, rng)
        write(s)
    return (time.perf_counter() - start) / n


def store_costs(url: str, sizes: list[int]) -> None:
    registry = build_registry(ServeConfig())
    print("1. per recorded step (mean), append vs full rewrite of the recording")
    for size in sizes:
        store = RedisSessionStore(url, registry, max_recorded_transitions=2 * size)
        s = store.create(registry.get(POLICY), 0, True)
        fill(s, size, np.random.default_rng(0))
        store.save(s)  # the recording so far, stored
        append = per_step(store, s, 300, store.save_recording)
        rewrite = per_step(store, s, 30 if size >= 10_000 else 100, store.save)
        entry = store._cache[s.id]
        t = time.perf_counter()
        store._compact(entry)
        compaction = time.perf_counter() - t
        amortized = append + compaction / (store.compact_after / 2)  # 2 events per step
        print(
            f"   {size:>6} steps recorded: append {append * 1e3:7.3f} ms/step "
            f"(+ compaction amortized: {amortized * 1e3:.3f}), full rewrite "
            f"{rewrite * 1e3:7.3f} ms/step: rewrite / append = {rewrite / append:.0f}x"
        )
        store.delete(s.id)
        store.close()


def act_latency(url: str, prefill: int, seconds: float, rounds: int) -> None:
    registry = build_registry(ServeConfig())
    cfg = ServeConfig(session_store=url, poll_interval=0, max_recorded_transitions=2 * prefill)
    server, port = create_server("127.0.0.1:0", registry, cfg)
    server.start()
    store: Any = server.sessions
    target = f"127.0.0.1:{port}"
    obs = np.zeros(4, np.float32)
    try:
        with PolicyClient(target) as client:
            probe = client.create_session(POLICY, seed=0)
            recording = [client.create_session(POLICY, seed=i, record=True) for i in range(4)]
            plain = [client.create_session(POLICY, seed=i) for i in range(4)]
            for i, sess in enumerate(recording):
                s = store.get(sess.id)
                fill(s, prefill, np.random.default_rng(i))
                store.save(s)

            def phase(streams: list[Any]) -> list[float]:
                stop = threading.Event()

                def stream(sess: Any) -> None:
                    with sess.stream() as loop:
                        reward = None
                        while not stop.is_set():
                            loop.act(obs, reward)
                            reward = 1.0

                threads = [threading.Thread(target=stream, args=(r,)) for r in streams]
                for t in threads:
                    t.start()
                if streams:
                    time.sleep(0.5)
                lat = []
                end = time.perf_counter() + seconds
                while time.perf_counter() < end:
                    t0 = time.perf_counter()
                    probe.act(obs, deterministic=True)
                    lat.append(time.perf_counter() - t0)
                stop.set()
                for t in threads:
                    t.join()
                return lat

            def p99(lat: list[float]) -> float:
                return float(np.percentile(lat, 99) * 1e3)

            names = ["no streams", "streams, not recording", "streams, append"]
            p99s: dict[str, list[float]] = {n: [] for n in [*names, "streams, full rewrite"]}
            p50s: dict[str, list[float]] = {n: [] for n in p99s}
            for _ in range(rounds):  # interleaved: the machine's noise hits every phase alike
                for name, streams in zip(names, ([], plain, recording), strict=True):
                    lat = phase(streams)
                    p99s[name].append(p99(lat))
                    p50s[name].append(statistics.median(lat) * 1e3)
            store.save_recording = store.save  # the old way: the whole recording every step
            lat = phase(recording)
            p99s["streams, full rewrite"].append(p99(lat))
            p50s["streams, full rewrite"].append(statistics.median(lat) * 1e3)
            print(
                f"2. another client's Act, 4 StreamAct streams on sessions of {prefill} recorded "
                f"steps ({seconds:g} s phases, median of {rounds} interleaved rounds; the full "
                "rewrite once)"
            )
            base, plain99 = (
                statistics.median(p99s["no streams"]),
                statistics.median(p99s["streams, not recording"]),
            )
            for name in p99s:
                m99 = statistics.median(p99s[name])
                print(
                    f"   {name:<24} p50 {statistics.median(p50s[name]):6.2f} ms  p99 {m99:7.2f} ms"
                    f"  (p99s {', '.join(f'{x:.1f}' for x in p99s[name])})  p99 / no streams "
                    f"{m99 / base:.1f}x, / non-recording streams {m99 / plain99:.1f}x"
                )
    finally:
        server.stop(None).wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    redis_server = RedisServer().start()
    try:
        store_costs(redis_server.url, [1000] if args.quick else [1000, 10_000])
        if args.quick:
            act_latency(redis_server.url, 1000, 2.0, 1)
        else:
            act_latency(redis_server.url, 10_000, 4.0, 3)
    finally:
        redis_server.stop()


if __name__ == "__main__":
    main()
