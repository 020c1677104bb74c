# Qwen Edit Studio: one process (web + worker), data in /data (mount a volume there).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    QES_DATA_DIR=/data \
    QES_HOST=0.0.0.0 \
    QES_PORT=8000

WORKDIR /app
COPY pyproject.toml README.md ./
COPY app ./app
COPY templates ./templates
COPY static ./static
COPY migrations ./migrations
# Editable, so the app finds templates/, static/ and migrations/ beside the package.
RUN pip install -e .

RUN useradd --system --uid 10001 --home-dir /data studio \
    && mkdir -p /data && chown studio /data
USER studio
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"
CMD ["python", "-m", "app"]
