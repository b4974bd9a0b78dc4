# metarl policy server: the bundled policies, or a mounted model directory.
#   docker build -t metarl .
#   docker run -p 50051:50051 metarl
#   docker run -p 50051:50051 -v "$PWD/models:/models:ro" -e METARL_MODEL_DIR=/models metarl
# Configure it with METARL_<OPTION> variables (METARL_PORT, METARL_TLS_CERT, ...), not flags: the
# HEALTHCHECK reads the same variables, so it follows the port and TLS.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Every pip install below (and the build environments pip creates) is pinned by constraints.txt.
COPY constraints.txt ./
ENV PIP_CONSTRAINT=/app/constraints.txt

# The CPU build of torch first, from PyTorch's CPU index (so nothing can pull CUDA packages);
# its own dependencies (filelock, sympy, networkx, jinja2, fsspec, ...) are pinned too.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

COPY client/ client/
COPY envs/ envs/
COPY pyproject.toml README.md LICENSE ./
COPY metarl/ metarl/
COPY server/ server/
RUN pip install ./client ./envs . \
    && useradd --system --uid 10001 --no-create-home metarl

USER metarl
ENV METARL_HOST="[::]" METARL_PORT=50051
EXPOSE 50051
# python -m metarl_server.healthcheck: METARL_PORT, METARL_HOST and METARL_TLS_* as the server.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "metarl_server.healthcheck", "--timeout", "3"]
# The serving process without torch (adaptation runs in its worker process).
CMD ["python", "-m", "metarl_server"]
