# Two images from one file: `serve` (default; no torch, small) and `train` (torch CPU build).
# Their commands are the entry points the tests run: `cddae serve`, `cddae train`, `cddae export`.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training

FROM base AS train
RUN pip install '.[train]'
ENTRYPOINT ["cddae"]
CMD ["--help"]

FROM base AS serve
RUN pip install . && useradd --system --uid 10001 cddae
USER cddae
ENV CDDAE_MODELS_DIR=/models CDDAE_INTERACTIONS_LOG=/data/interactions.jsonl
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=1)"
CMD ["cddae", "serve", "--models-dir", "/models", "--host", "0.0.0.0", "--port", "8000"]
