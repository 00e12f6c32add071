# labelloop, CPU image: the receiver, the workers and Flower (the command picks the process).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    LABELLOOP_MODELS_DIR=/data/models LABELLOOP_CACHE_DIR=/data/cache
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" "torchvision==0.28.0" \
 && pip install ".[ml]"
VOLUME ["/data"]
EXPOSE 9090
CMD ["labelloop", "serve", "--host", "0.0.0.0", "--port", "9090"]
