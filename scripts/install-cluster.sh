#!/usr/bin/env bash
# install-cluster.sh: the Python environment for the paper run on a GPU cluster, in one command (`make
# install-cluster` runs it). From the repository root, on a node whose NVIDIA driver is the compute nodes' one:
#
#   scripts/install-cluster.sh            # .venv with the pinned packages, the torch build for this driver, and
#                                         # the paper extras (DeepSpeed, which the ZeRO-3 accelerate config needs)
#   scripts/install-cluster.sh --dry-run  # print the detected driver, the chosen build and the commands only
#
# torch==2.14.1 from PyPI is the CUDA 13.0 build, which needs an NVIDIA driver of the R580 series or newer. With an
# older driver this script installs the same torch version built for the newest CUDA the driver supports (12.8 or
# 12.6) from the PyTorch package index, before the rest, so pip keeps it. DeepSpeed is installed after torch (its
# build step imports torch) and compiles its CUDA ops on first use.
#
# Environment (defaults in brackets):
#   VENV          the environment to create or update             [.venv]
#   PYTHON        interpreter for a new environment               [python3.11]
#   TORCH_CUDA    force a build: cu130, cu128, cu126, cpu         [detected from `nvidia-smi`]
#   CUDA_VERSION  the driver's CUDA version, if nvidia-smi is not on this node (e.g. 12.4)
set -euo pipefail

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
cd "$(dirname "$0")/.."

pin() { # pin NAME: the exact version pyproject.toml pins
  sed -n "s/^ *\"$1==\([^\";]*\)\".*/\1/p" pyproject.toml | head -n1
}
TORCH=$(pin torch)
TORCHVISION=$(pin torchvision)
[ -n "$TORCH" ] && [ -n "$TORCHVISION" ] || { echo "no torch/torchvision pin in pyproject.toml" >&2; exit 1; }

driver_cuda() { # the highest CUDA version the driver supports, e.g. 12.4 (nvidia-smi's header)
  if [ -n "${CUDA_VERSION:-}" ]; then
    echo "$CUDA_VERSION"
  elif command -v nvidia-smi > /dev/null; then
    nvidia-smi 2> /dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n1
  fi
}

choose() { # choose X.Y: the torch build for a driver that supports CUDA X.Y
  local major=${1%%.*} minor=${1#*.}
  local v=$((major * 100 + minor))
  if [ "$v" -ge 1300 ]; then echo cu130
  elif [ "$v" -ge 1208 ]; then echo cu128
  elif [ "$v" -ge 1206 ]; then echo cu126
  else echo "too-old"
  fi
}

if [ -n "${TORCH_CUDA:-}" ]; then
  BUILD=$TORCH_CUDA
  echo "torch build: $BUILD (TORCH_CUDA)"
else
  CUDA=$(driver_cuda)
  if [ -z "$CUDA" ]; then
    echo "no NVIDIA driver found (nvidia-smi): run this on a GPU node, or set CUDA_VERSION=<the compute nodes'" \
      "CUDA version from nvidia-smi> or TORCH_CUDA=cu130|cu128|cu126|cpu" >&2
    exit 2
  fi
  BUILD=$(choose "$CUDA")
  echo "driver supports CUDA $CUDA -> torch build: $BUILD"
  if [ "$BUILD" = too-old ]; then
    echo "torch $TORCH has no build for CUDA $CUDA: update the NVIDIA driver (CUDA 12.6 or newer: R560+)" >&2
    exit 2
  fi
fi

run() {
  echo "+ $*"
  [ "$DRY" = 1 ] || "$@"
}

[ -x "$VENV/bin/python" ] || run "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install)
run "${PIP[@]}" --upgrade pip
if [ "$BUILD" = cu130 ]; then
  run "${PIP[@]}" "torch==$TORCH" "torchvision==$TORCHVISION" # PyPI's build is the CUDA 13.0 one
else
  run "${PIP[@]}" "torch==$TORCH" "torchvision==$TORCHVISION" --index-url "https://download.pytorch.org/whl/$BUILD"
fi
run "${PIP[@]}" -e '.[paper]' # every other pin of pyproject.toml, DeepSpeed included; the torch above is kept
run "$VENV/bin/python" -c "import torch, deepspeed; print('torch', torch.__version__, 'CUDA', torch.version.cuda, \
'GPUs', torch.cuda.device_count(), '| deepspeed', deepspeed.__version__)"
