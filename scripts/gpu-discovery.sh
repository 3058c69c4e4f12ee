#!/usr/bin/env bash
# Spark resource discovery script for GPUs: prints {"name": "gpu", "addresses": ["0", "1", ...]},
# one address per GPU that nvidia-smi lists. Used as spark.worker.resource.gpu.discoveryScript on
# standalone workers (scripts/cluster.sh --gpus) and spark.executor.resource.gpu.discoveryScript
# elsewhere; EMR ships its own at /usr/lib/spark/scripts/gpu/getGpusResources.sh.
set -euo pipefail
command -v nvidia-smi >/dev/null || { echo "gpu-discovery: nvidia-smi not found; no NVIDIA driver on this host" >&2; exit 1; }
addresses=$(nvidia-smi --query-gpu=index --format=csv,noheader | tr -d ' ' | sed '/^$/d' | sed 's/.*/"&"/' | paste -sd, -)
echo "{\"name\": \"gpu\", \"addresses\": [${addresses}]}"
