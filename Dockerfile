# syntax=docker/dockerfile:1
# The edgefleet hub as a container image: `docker build -t edgefleet-hub .`
# Written and linted (hadolint, tests/test_containers.py) on a machine without a
# container engine: not built or run there. See docs/operations.md, "Containers".

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the wheel, from this source tree --------------------------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN pip install --no-cache-dir "build==1.2.2" "hatchling==1.27.0"
COPY pyproject.toml README.md CHANGELOG.md ./
COPY core core
COPY packager packager
COPY agent agent
COPY hub hub
COPY device-profiles device-profiles
RUN python -m build --no-isolation --wheel --outdir /wheels

# --- runtime: the wheel with [hub], a dedicated unprivileged user -------------------
FROM ${PYTHON_IMAGE} AS hub
# A fixed uid/gid so the broker container (compose.yaml) can run as the same account
# and read the files `hub broker-config` writes.
# keep equal to USER below
ARG EDGEFLEET_UID=10001
RUN groupadd --system --gid "${EDGEFLEET_UID}" edgefleet \
    && useradd --system --uid "${EDGEFLEET_UID}" --gid edgefleet \
        --home-dir /var/lib/edgefleet-hub --shell /usr/sbin/nologin edgefleet \
    && install -d -o edgefleet -g edgefleet -m 0750 /var/lib/edgefleet-hub /broker
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/edgefleet-*.whl)[hub]" && rm -rf /wheels
COPY docker/hub.toml /etc/edgefleet/hub.toml
# numeric, so a host or orchestrator can tell it is not root without the image's passwd
USER 10001:10001
WORKDIR /var/lib/edgefleet-hub
VOLUME ["/var/lib/edgefleet-hub"]
# Prometheus metrics (fleet.metrics_port in docker/hub.toml); answered once the hub
# has subscribed at the broker, so it doubles as the health check.
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=4)"]
ENTRYPOINT ["edgefleet"]
CMD ["hub", "serve", "--config", "/etc/edgefleet/hub.toml"]
