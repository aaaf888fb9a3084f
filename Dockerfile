# lektrico-exporter image: docs/deployment.md shows how to run it.
#   docker build -t lektrico-exporter .
# Both stages use the same pinned base, so the venv built in the first runs unchanged in the second.

FROM python:3.11.14-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
# The venv gets no pip of its own: the builder's pip installs into it, and the image stays smaller.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/venv \
    && python -m pip --python /opt/venv/bin/python install /wheels/*.whl

FROM python:3.11.14-slim-bookworm
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
