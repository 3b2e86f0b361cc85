#!/usr/bin/env bash
# Install scg and its dependencies. torch 2.13.0 first: the CPU build lies on local disk,
# and installing it before scg keeps pip from pulling a multi-GB CUDA build.
set -euo pipefail
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev,docs]"
