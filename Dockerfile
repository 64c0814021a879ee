# MetaRouter: one process; SQLite in /data unless DATABASE_URL says otherwise.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 METAROUTER_DATA_DIR=/data METAROUTER_HTTP_HOST=0.0.0.0
WORKDIR /app
# CPU PyTorch first: the embedding model's package depends on it, and the default wheel is CUDA (GBs).
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md alembic.ini ./
COPY core ./core
COPY bot ./bot
COPY migrations ./migrations
RUN pip install --no-cache-dir .
RUN mkdir -p /data && chown 65534:65534 /data
VOLUME /data
EXPOSE 8080
USER 65534:65534
ENTRYPOINT ["metarouter"]
CMD ["serve"]
