# metarl policy server on the bundled policies:
#   docker build -t metarl . && docker run -p 50051:50051 metarl
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# The CPU build of torch first, so the unpinned dependency resolution cannot pull CUDA packages.
COPY constraints.txt ./
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

COPY client/ client/
COPY envs/ envs/
COPY pyproject.toml README.md ./
COPY metarl/ metarl/
COPY server/ server/
RUN pip install -c constraints.txt ./client ./envs . \
    && useradd --system --uid 10001 --no-create-home metarl

USER metarl
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s CMD python -c "import grpc, sys; \
from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; \
s = g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(), timeout=2); \
sys.exit(0 if s.status == h.HealthCheckResponse.SERVING else 1)"
CMD ["metarl", "serve", "--host", "[::]", "--port", "50051"]
