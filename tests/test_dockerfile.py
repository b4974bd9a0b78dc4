"""The Dockerfile, read (no Docker daemon here): a pinned base image, constraints on every pip
install, a HEALTHCHECK following METARL_PORT and TLS, sources that exist, a full .dockerignore."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
LINES = [ln.strip() for ln in DOCKERFILE.replace("\\\n", " ").splitlines() if ln.strip()]
INSTRUCTIONS = [ln for ln in LINES if not ln.startswith("#")]


def test_base_image_is_an_exact_tag() -> None:
    (base,) = [ln.split()[1] for ln in INSTRUCTIONS if ln.startswith("FROM ")]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), base


def test_constraints_apply_to_every_pip_install() -> None:
    first_pip = next(i for i, ln in enumerate(INSTRUCTIONS) if "pip install" in ln)
    set_at = next(i for i, ln in enumerate(INSTRUCTIONS) if "PIP_CONSTRAINT=" in ln)
    assert set_at < first_pip
    path = re.search(r"PIP_CONSTRAINT=(\S+)", INSTRUCTIONS[set_at]).group(1)  # type: ignore[union-attr]
    assert any(ln.startswith("COPY constraints.txt") for ln in INSTRUCTIONS[:set_at])
    assert path == "/app/constraints.txt"
    assert any("--index-url https://download.pytorch.org/whl/cpu" in ln for ln in INSTRUCTIONS)
    constraints = (ROOT / "constraints.txt").read_text()
    for dep in ("torch==", "filelock==", "sympy==", "networkx==", "Jinja2==", "fsspec=="):
        assert dep in constraints  # torch's own dependencies are pinned too


def test_healthcheck_follows_the_servers_configuration() -> None:
    (health,) = [ln for ln in INSTRUCTIONS if ln.startswith("HEALTHCHECK")]
    assert "metarl_server.healthcheck" in health and "50051" not in health
    (cmd,) = [ln for ln in INSTRUCTIONS if ln.startswith("CMD ")]
    assert "--port" not in cmd  # the port comes from METARL_PORT, which the probe reads too
    assert any("METARL_PORT=" in ln for ln in INSTRUCTIONS if ln.startswith("ENV"))
    assert (ROOT / "server" / "metarl_server" / "healthcheck.py").is_file()


def test_copied_sources_exist_and_dockerignore_is_complete() -> None:
    for ln in INSTRUCTIONS:
        if ln.startswith("COPY "):
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), src
    ignored = set((ROOT / ".dockerignore").read_text().split())
    for entry in (".git", ".venv", "**/build", "**/*.egg-info", "runs", "**/__pycache__",
                  ".pytest_cache", ".mypy_cache", ".ruff_cache", ".tools"):  # fmt: skip
        assert entry in ignored, entry


def test_license_matches_pyproject() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()
