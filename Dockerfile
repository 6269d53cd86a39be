# syntax=docker/dockerfile:1
#
# attrgate production image: the same `pip install -c constraints.txt .` as the README's production
# install (no [local] extra, so no moto), in a venv built in one stage and copied into a slim
# runtime stage that runs as a non-root user.
#
#   docker build -t attrgate .
#   docker run -p 50051:50051 -p 50052:50052 \
#     -v /path/to/tls:/etc/attrgate/tls:ro \
#     -e ATTRGATE_TLS_CERT=/etc/attrgate/tls/server.pem \
#     -e ATTRGATE_TLS_KEY=/etc/attrgate/tls/server.key \
#     -e ATTRGATE_CLIENT_CA=/etc/attrgate/tls/clients-ca.pem \
#     -e AWS_REGION=eu-west-1 attrgate
#
# The policies under /etc/attrgate/policies are the repository's examples: mount your own set there
# (or point ATTRGATE_POLICIES elsewhere). Port 50051 is the gRPC API (mTLS unless told otherwise),
# port 50052 a plaintext listener serving only grpc.health.v1, for probes and the HEALTHCHECK.
# tests/test_dockerfile.py lints this file with hadolint and replays its install and HEALTHCHECK.

# One pinned base for both stages: the venv's interpreter path must exist in the runtime stage.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PATH=/opt/attrgate/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/attrgate
WORKDIR /src
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY server/ server/
# The cache mount keeps pip's downloads out of the layer and reuses them across builds.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c constraints.txt .

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="attrgate" \
      org.opencontainers.image.description="Policy-enforcing gRPC proxy for Cognito AdminUpdateUserAttributes" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 attrgate \
 && useradd --system --uid 10001 --gid 10001 --no-log-init --create-home \
      --home-dir /home/attrgate --shell /usr/sbin/nologin attrgate \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/attrgate
COPY --from=build /opt/attrgate /opt/attrgate
# Owned by root and read-only to attrgate: the running proxy cannot change its own policies.
COPY policies/ /etc/attrgate/policies/
ENV PATH=/opt/attrgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ATTRGATE_LISTEN=0.0.0.0:50051 \
    ATTRGATE_ADMIN_LISTEN=0.0.0.0:50052 \
    ATTRGATE_POLICIES=/etc/attrgate/policies \
    ATTRGATE_STATE=/var/lib/attrgate/state.sqlite
# SMS guard counts (SQLite) survive restarts here; several replicas share --redis-url instead.
VOLUME ["/var/lib/attrgate"]
USER 10001:10001
WORKDIR /home/attrgate
EXPOSE 50051 50052
# SERVING once the policies are loaded and the Cognito client is built; NOT_SERVING while draining.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["attrgate", "health", "--target", "127.0.0.1:50052"]
# attrgate is PID 1. On SIGTERM it reports NOT_SERVING, keeps serving for --drain-delay (5 s),
# then lets calls in flight finish within --grace (10 s): stop it with `docker stop -t 30` (or a
# pod terminationGracePeriodSeconds above drain delay + grace + read timeout + trace flush).
STOPSIGNAL SIGTERM
ENTRYPOINT ["attrgate"]
CMD ["serve"]
