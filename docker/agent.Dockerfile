# syntax=docker/dockerfile:1
# The edgefleet agent for devices that run containers (balena-style fleets):
#   docker buildx build --platform linux/arm64,linux/amd64 -f docker/agent.Dockerfile .
# The wheel is pure Python and built once on the build platform; the runtime stage
# installs onnxruntime for the target platform (aarch64 wheels exist for Pi 4/5).
# Written and linted (hadolint, tests/test_containers.py) on a machine without a
# container engine: not built or run there.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM --platform=${BUILDPLATFORM} ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN pip install --no-cache-dir "build==1.2.2" "hatchling==1.27.0"
COPY pyproject.toml README.md CHANGELOG.md ./
COPY core core
COPY packager packager
COPY agent agent
COPY hub hub
COPY device-profiles device-profiles
RUN python -m build --no-isolation --wheel --outdir /wheels

FROM ${PYTHON_IMAGE} AS agent
# keep equal to USER below
ARG EDGEFLEET_UID=10002
RUN groupadd --system --gid "${EDGEFLEET_UID}" edgefleet \
    && useradd --system --uid "${EDGEFLEET_UID}" --gid edgefleet \
        --home-dir /var/lib/edgefleet --shell /usr/sbin/nologin edgefleet \
    && install -d -o edgefleet -g edgefleet -m 0750 /var/lib/edgefleet
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/edgefleet-*.whl)[agent]" && rm -rf /wheels
# numeric, so a host or orchestrator can tell it is not root without the image's passwd
USER 10002:10002
# The state directory is the working directory (as in the systemd unit) and a volume:
# installed versions, the deployment journal and the telemetry buffer survive updates
# of the container. agent.toml, trust.json and ca.crt are mounted at /etc/edgefleet
# (agent.toml readable by this user only: it holds the broker password).
WORKDIR /var/lib/edgefleet
VOLUME ["/var/lib/edgefleet"]
# The endpoint listens on 127.0.0.1 unless agent.toml sets a host and a token.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import json, urllib.request; u = json.load(open('/var/lib/edgefleet/endpoint.json'))['url']; urllib.request.urlopen(u + '/v2/health/live', timeout=4)"]
ENTRYPOINT ["edgefleet"]
CMD ["agent", "run", "--config", "/etc/edgefleet/agent.toml"]
