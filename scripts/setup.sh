#!/usr/bin/env bash
# Set up scg for development in a virtual environment, .venv at the repository root: creates it
# if it is missing (python3 -m venv), then installs torch 2.13.0 and `pip install -e ".[dev,docs,ray]"`
# into it. Run again at any time: it reuses the environment, and returns at once unless
# pyproject.toml, this script or SCG_TORCH_INDEX changed since it last finished.
#
# Environment variables it reads:
#   SCG_VENV         where the environment lives (default: .venv; relative to the repository root)
#   SCG_PYTHON       the Python (3.10 or newer) that creates it (default: python3, else python)
#   SCG_TORCH_INDEX  the package index torch is taken from (default: a torch 2.13.0 wheel already
#                    on this machine if pip finds one there, e.g. through PIP_FIND_LINKS, else the
#                    CPU build from https://download.pytorch.org/whl/cpu). For a CUDA build, name
#                    a CUDA index, e.g. SCG_TORCH_INDEX=https://download.pytorch.org/whl/cu126
#                    (the CUDA versions pytorch.org lists for torch 2.13), or PyPI's
#                    (SCG_TORCH_INDEX=https://pypi.org/simple: on Linux its wheel is a CUDA build).
#                    Use it on a new environment: pip keeps a torch 2.13.0 already installed.
#
# Why torch comes first, pinned: scg needs torch>=2.1, and pip asked for that alone on Linux
# takes PyPI's default wheel, a CUDA build of several GB. Installing the CPU build first (a 190 MB
# wheel) leaves pip nothing to fetch for torch when it installs scg.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${SCG_VENV:-.venv}"
torch_spec="torch==2.13.0"

if ! "$venv/bin/python" -c 'import pip' >/dev/null 2>&1; then
    python="${SCG_PYTHON:-$(command -v python3 || command -v python || true)}"
    if [ -z "$python" ]; then
        echo "setup.sh: no python3 found; install Python 3.10 or newer (Debian: apt-get install -y python3 python3-venv)" >&2
        exit 1
    fi
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        echo "setup.sh: scg needs Python 3.10 or newer; $python is $("$python" -V 2>&1). Set SCG_PYTHON to a newer one." >&2
        exit 1
    fi
    if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        # Debian and Ubuntu ship venv's pip bootstrap in a separate package.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "setup.sh: installing python3-venv (Debian's venv support) with apt-get" >&2
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        else
            echo "setup.sh: $python cannot create a virtual environment; on Debian or Ubuntu run" >&2
            echo "  sudo apt-get install -y python3-venv" >&2
            exit 1
        fi
    fi
    echo "setup.sh: creating the virtual environment $venv" >&2
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install -q)

# Already set up from this pyproject.toml and this script, with the same torch index: done.
stamp="$venv/.scg-setup"
state="$("$venv/bin/python" -c 'import hashlib, sys
h = hashlib.sha256(sys.argv[1].encode())
for p in sys.argv[2:]:
    h.update(open(p, "rb").read())
print(h.hexdigest())' "${SCG_TORCH_INDEX:-}" pyproject.toml scripts/setup.sh)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$state" ] && "$venv/bin/python" -c 'from importlib.metadata import version
version("scg"), version("torch")' 2>/dev/null; then
    echo "setup.sh: $venv is up to date" >&2
    exit 0
fi
rm -f "$stamp"

if [ -n "${SCG_TORCH_INDEX:-}" ]; then
    "${pip[@]}" "$torch_spec" --index-url "$SCG_TORCH_INDEX"
elif "${pip[@]}" --no-index --no-deps "$torch_spec" >/dev/null 2>&1; then
    # torch 2.13.0 was installed already, or lies on this machine (pip's find-links): its own
    # dependencies from the usual index.
    "${pip[@]}" "$torch_spec"
else
    "${pip[@]}" "$torch_spec" --index-url https://download.pytorch.org/whl/cpu
fi
"${pip[@]}" -e ".[dev,docs,ray]"
echo "$state" > "$stamp"
echo "setup.sh: done; use $venv/bin/python, or 'source $venv/bin/activate' first" >&2
