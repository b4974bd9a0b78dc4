"""python -m metarl_server.healthcheck (the Docker HEALTHCHECK) follows METARL_PORT and TLS."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from metarl_server.app import ServeConfig, create_server
from tests.client_support import free_port


def probe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("METARL_")}
    return subprocess.run(
        [sys.executable, "-m", "metarl_server.healthcheck", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def probe_until_serving(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The probe, retried as a HEALTHCHECK's retries would (a loaded machine may be slow to
    answer, or the server not SERVING yet), for up to 30 s."""
    deadline = time.monotonic() + 30
    while True:
        done = probe(env, "--timeout", "5", *args)
        if done.returncode == 0 or time.monotonic() > deadline:
            return done
        time.sleep(0.5)


@pytest.fixture
def serving(bundled_registry: Any) -> Iterator[int]:
    server, port = create_server("[::]:0", bundled_registry, ServeConfig())
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


def test_plaintext_follows_metarl_port(serving: int) -> None:
    ok = probe_until_serving({"METARL_PORT": str(serving)})
    assert ok.returncode == 0, ok.stderr
    assert f"127.0.0.1:{serving}: SERVING" in ok.stdout
    assert probe_until_serving({}, "--port", str(serving), "--host", "localhost").returncode == 0
    down = probe({"METARL_PORT": str(free_port())}, "--timeout", "0.5")
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr


def test_tls_with_the_servers_certificate_and_name(tmp_path: Path, bundled_registry: Any) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=metarl.internal",
            "-addext", "subjectAltName=DNS:metarl.internal",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    cfg = ServeConfig(tls_cert=cert, tls_key=key)
    server, port = create_server("[::]:0", bundled_registry, cfg)
    server.start()
    try:
        tls = {"METARL_PORT": str(port), "METARL_TLS_CERT": str(cert), "METARL_TLS_KEY": str(key)}
        ok = probe_until_serving(tls)
        assert ok.returncode == 0, ok.stderr
        plain = probe({"METARL_PORT": str(port)}, "--timeout", "1")  # TLS server, no TLS probe
        assert plain.returncode == 1
        wrong_name = probe({**tls, "METARL_HEALTHCHECK_SERVER_NAME": "other.example"})
        assert wrong_name.returncode == 1
    finally:
        server.stop(None)
