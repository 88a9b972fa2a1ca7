# The Latent Studio image used by compose.yaml (web, worker, worker-cpu and flower run the same image).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 STUDIO_HOME=/data
WORKDIR /app

# torch first, pinned (a CUDA build on x86_64 Linux: the same image serves GPU and CPU workers).
ARG TORCH_SPEC=torch==2.13.0
RUN pip install "${TORCH_SPEC}"

COPY pyproject.toml README.md ./
COPY studio ./studio
COPY plugins ./plugins
RUN pip install . flower \
    && useradd --create-home --uid 1000 studio \
    && mkdir -p /data && chown studio /data

USER studio
VOLUME ["/data"]
EXPOSE 7860
CMD ["studio", "up", "--host", "0.0.0.0", "--port", "7860"]
