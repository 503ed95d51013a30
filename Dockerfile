# syntax=docker/dockerfile:1
# The gateway services (template, instance, auth, usersync) and the aigcctl CLI in one image:
#   docker build -t aigc-gateway .
#   docker run aigc-gateway serve template        (the Helm chart runs one service per Deployment)
# Multi-stage: the build stage installs the project into a virtualenv; the runtime stage is
# python-slim with that virtualenv only (no pip cache, no build tools, no sources), run as a
# non-root user. Every dependency ships manylinux wheels, so no compiler is needed.
# The bases are build arguments: scripts/images passes bases it made with mmdebstrap from Debian
# packages where the official ones cannot be pulled (docs/images.md). A base must have python3 at
# the same path in both stages (the virtualenv links to it) and groupadd/useradd in the runtime one.
ARG PYTHON_VERSION=3.11
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim
ARG BUILD_IMAGE=${BASE_IMAGE}

FROM ${BUILD_IMAGE} AS build
# Set only where a TLS-intercepting egress needs its CA for pip (scripts/images mounts it read-only
# for the build's RUN steps); it is no part of the image.
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/aigc-gateway
WORKDIR /src
# Only what the distribution is built from: tests, the test bed and the Go bridge stay out.
# The dependencies first, from pyproject.toml alone, installed and byte-compiled in a layer of their
# own: a change of the sources alone reuses it (the compileall below then finds them up to date).
COPY pyproject.toml ./
RUN python3 -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
      > /tmp/requirements.txt \
 && /opt/aigc-gateway/bin/pip install --no-compile -r /tmp/requirements.txt \
 && /opt/aigc-gateway/bin/python -m compileall -q -j 0 /opt/aigc-gateway/lib
COPY README.md ./
COPY src ./src
COPY services ./services
# Byte-compiled at build time: the root filesystem is read-only at run time.
RUN /opt/aigc-gateway/bin/pip install --no-compile --no-deps . \
 && /opt/aigc-gateway/bin/pip uninstall --yes pip setuptools wheel \
 && /opt/aigc-gateway/bin/python -m compileall -q -j 0 /opt/aigc-gateway/lib

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="aigc-gateway" \
      org.opencontainers.image.description="AIGC Gateway services and aigcctl" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 aigc \
 && useradd --system --uid 10001 --gid aigc --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin aigc
COPY --from=build /opt/aigc-gateway /opt/aigc-gateway
ENV PATH=/opt/aigc-gateway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AIGC_GATEWAY__DATA_DIR=/tmp/aigc-gateway
USER 10001:10001
# gRPC, Prometheus metrics, auth HTTP (/auth, /sign-in…), usersync HTTP (Logto webhooks).
EXPOSE 50051 9464 8081 8082
ENTRYPOINT ["aigc-gateway"]
CMD ["serve", "all"]
