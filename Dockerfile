# Three images from one file:
#   serve     (default) the API: no torch, non-root, health-checked;
#   train     `cddae train / export / retrain` with the training extra (torch CPU build);
#   scheduler train + Debian's cron, running `cddae retrain` on $CDDAE_RETRAIN_SCHEDULE.
#
# BASE_IMAGE is any Debian-like image with python3 (3.11) and its venv module: the official
# python:3.11-slim by default; scripts/compose_test.py builds one from Debian packages where no
# registry is reachable. Python packages come from PyPI, or only from ./wheelhouse when it holds
# wheels (an offline build: scripts/compose_test.py fills it on the host).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Build stages: the venvs are made here, with the wheelhouse; the images below copy only the
# venv, so no wheel (torch's least of all) ends up in a layer of an image that is shipped.
FROM base AS build
RUN python3 -m venv /opt/venv
COPY wheelhouse/ /wheelhouse/
COPY docker/install.sh /usr/local/bin/cddae-install
COPY pyproject.toml ./
# Dependencies first, from pyproject.toml alone (empty packages and README stand in for the
# real ones): that layer, torch included, is rebuilt only when the dependencies change, not
# with every commit.
RUN mkdir service training && touch service/__init__.py training/__init__.py README.md

FROM build AS train-build
RUN cddae-install '.[train]'
COPY README.md ./
COPY service ./service
COPY training ./training
RUN cddae-install --no-deps --force-reinstall .

FROM build AS serve-build
RUN cddae-install .
COPY README.md ./
COPY service ./service
COPY training ./training
RUN cddae-install --no-deps --force-reinstall .

FROM base AS train
COPY --from=train-build /opt/venv /opt/venv
ENTRYPOINT ["cddae"]
CMD ["--help"]

FROM train AS scheduler
# Debian's cron: the classic, maintained cron daemon, from the base's own package manager.
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cron \
    && rm -rf /var/lib/apt/lists/*
# The user the jobs run as (cron itself needs root to switch to it); the API's uid, so the
# volumes they share need no other permissions.
RUN useradd --system --uid 10001 --no-create-home cddae 2>/dev/null \
    || adduser --system --uid 10001 --no-create-home cddae
COPY docker/scheduler.sh /usr/local/bin/cddae-scheduler
COPY docker/retrain.sh /usr/local/bin/cddae-retrain
COPY docker/init.sh /usr/local/bin/cddae-init
ENTRYPOINT []
CMD ["cddae-scheduler"]

FROM base AS serve
COPY --from=serve-build /opt/venv /opt/venv
RUN useradd --system --uid 10001 --no-create-home cddae 2>/dev/null \
    || adduser --system --uid 10001 --no-create-home cddae
USER 10001
ENV CDDAE_MODELS_DIR=/models CDDAE_INTERACTIONS_LOG=/data/interactions.jsonl
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=2s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=1)"
CMD ["cddae", "serve", "--models-dir", "/models", "--host", "0.0.0.0", "--port", "8000"]
