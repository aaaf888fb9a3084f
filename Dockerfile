# lektrico-exporter image: docs/deployment.md shows how to build and run it.
#   docker build -t lektrico-exporter .
#   podman build --format docker --build-arg BASE_IMAGE=localhost/debian-python:bookworm .
# Both stages use the same base, so the venv built in the first runs unchanged in the second.
# Any Debian-like base with python3 (and its venv module) works; scripts/build-image.sh makes one
# with mmdebstrap where no registry is reachable.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

FROM ${BASE_IMAGE} AS builder
# Where pip downloads from. Only this stage sees it; the final stage starts again from the base.
# A CA bundle for the index goes in as the build secret `pip-ca`, which no layer keeps.
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements-build.lock requirements.lock pyproject.toml README.md ./
COPY exporter ./exporter
# Every download is checked against a hash in the lock files (so the image is reproducible); the
# exporter's own wheel is built from this source without build isolation, with the pinned tools.
# The venv gets no pip of its own: the build venv's pip installs into it.
RUN --mount=type=secret,id=pip-ca,target=/run/secrets/pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && python3 -m venv /opt/build \
    && /opt/build/bin/python -m pip install --require-hashes --no-deps -r requirements-build.lock \
    && /opt/build/bin/python -m pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
    && python3 -m venv --without-pip /opt/venv \
    && /opt/build/bin/python -m pip --python /opt/venv/bin/python install \
       --require-hashes --no-deps -r requirements.lock \
    && /opt/build/bin/python -m pip --python /opt/venv/bin/python install \
       --no-deps --no-index /wheels/*.whl

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="lektrico-exporter" \
      org.opencontainers.image.description="Prometheus and InfluxDB exporter for Lektri.co EV chargers and energy meters" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 lektrico \
    && useradd --system --uid 10001 --gid lektrico --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin lektrico \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/lektrico-exporter
COPY --from=builder /opt/venv /opt/venv
# Numeric, so Kubernetes' runAsNonRoot can check it without looking up /etc/passwd.
USER 10001:10001
# The state store (sessions, derived counters): keep it on a volume to keep them.
VOLUME ["/var/lib/lektrico-exporter"]
EXPOSE 9654
HEALTHCHECK --interval=30s --timeout=10s --start-period=15s --retries=3 \
    CMD ["lektrico-exporter", "--config", "/etc/lektrico-exporter/config.yml", "--health-check"]
ENTRYPOINT ["lektrico-exporter"]
CMD ["--config", "/etc/lektrico-exporter/config.yml"]
