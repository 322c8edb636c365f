# syntax=docker/dockerfile:1
# One image for every process of the cluster: baas-node, baas-gateway and baas-cluster.
# docker-compose.cluster.yml (rendered by `baas-cluster compose`) runs it; the drift test
# (tests/test_compose_drift.py) checks this file installs the project and its commands.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: compile what has no wheel (fastecdsa, pulled in by libp2p, needs GMP headers)
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential libgmp-dev python3-dev \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv \
    && /opt/venv/bin/python -m pip install "pip==25.3"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY node ./node
COPY gateway ./gateway
COPY tools ./tools
COPY business ./business
# Dependencies are pinned in pyproject.toml; a non-editable install puts the project in the venv.
RUN /opt/venv/bin/python -m pip install . \
    && /opt/venv/bin/python -m pip check

# ---- runtime: the venv and the GMP runtime library only, no compiler
FROM ${PYTHON_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgmp10 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 baas \
    && useradd --system --uid 10001 --gid baas --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin baas \
    && mkdir -p /cluster /var/lib/baas \
    && chown baas:baas /cluster /var/lib/baas
# An empty named volume mounted on /cluster or /var/lib/baas takes this owner (uid 10001).
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /cluster
CMD ["baas-cluster", "--help"]
