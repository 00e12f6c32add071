# labelloop, CPU image: the receiver, the workers and Flower (the command picks the process).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    LABELLOOP_MODELS_DIR=/data/models LABELLOOP_CACHE_DIR=/data/cache
WORKDIR /app
COPY pyproject.toml README.md ./
COPY labelloop ./labelloop
COPY service ./service
COPY workers ./workers
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" "torchvision==0.28.0" \
 && pip install ".[ml]"
# An unprivileged user (uid 10001, the Kubernetes manifests' runAsUser) owns /data, the only
# place labelloop writes; the code in /app stays root's, read-only to the processes.
RUN groupadd --system --gid 10001 labelloop \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/labelloop \
    --shell /usr/sbin/nologin labelloop \
 && mkdir -p /data/models /data/cache && chown -R 10001:10001 /data
VOLUME ["/data"]
USER 10001
EXPOSE 9090
CMD ["labelloop", "serve", "--host", "0.0.0.0", "--port", "9090"]
