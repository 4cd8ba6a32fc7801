# Upscaler service image. CPU build by default:
#   docker build -t upscaler .
# CUDA build (pick the wheel index that matches the host's driver):
#   docker build -t upscaler:cuda --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
FROM python:3.11-slim

# torch comes from PyTorch's own wheel index: the CPU index keeps the image small (no CUDA libraries).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 upscaler \
    && useradd --system --uid 10001 --gid upscaler --create-home --home-dir /home/upscaler \
        --shell /usr/sbin/nologin upscaler \
    && install -d -o upscaler -g upscaler /home/upscaler/.cache/inductor

WORKDIR /app

# Layers from the least to the most often changed: torch, then the project's dependencies, then the code.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# Only the dependency list is read here, so editing app/ does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY app ./app
RUN pip install --no-deps . && rm -rf build ./*.egg-info

# The shipped models; docker-compose.yml mounts ./weights over this folder read-only.
COPY weights ./weights

# TORCHINDUCTOR_CACHE_DIR: where UPSCALER_COMPILE=1 keeps its compiled kernels (a volume in Compose,
# so a restart reuses them instead of compiling again).
ENV UPSCALER_WEIGHTS_DIR=/app/weights \
    UPSCALER_HOST=0.0.0.0 \
    UPSCALER_PORT=8000 \
    TORCHINDUCTOR_CACHE_DIR=/home/upscaler/.cache/inductor

USER upscaler

EXPOSE 8000

# /health/live answers while the process runs, also while models still load. Slim images have no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('UPSCALER_PORT', '8000') + '/health/live', timeout=4)" || exit 1

CMD ["python", "-m", "app"]
