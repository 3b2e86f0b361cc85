#!/usr/bin/env bash
# The pictures of the docs site, drawn from the zoo with the scg command (needs graphviz's dot).
# Run from the repository root: bash scripts/docs_pictures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/img
mkdir -p "$out"
scg() { python -m scg "$@"; }

scg render signalling -o "$out/signalling.svg" --credit
# the gridworld runs 30 steps: draw it rolled, or unrolled for a few (all 30 take dot minutes)
scg render async_gridworld -o "$out/async_gridworld_rolled.svg" --rolled --credit
scg render async_gridworld -o "$out/async_gridworld_unrolled.svg" --unrolled 3
