#!/usr/bin/env bash
# Fresh set-up: a virtual environment with the pinned stack, and the data linked in.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and pinned: on these machines pip finds the CPU wheel for 2.13.0; an
# unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e '.[dev]'
# The course archive lives beside the project on our machines; elsewhere point
# WITH_SENSE_DATA_DIR (or --data-dir) at your copy.
if [ ! -e data/with_sense ] && [ -d ../shared/data/with_sense ]; then
  mkdir -p data
  ln -s ../../shared/data/with_sense data/with_sense
fi
echo "set-up done: $(.venv/bin/python --version), data at $(readlink -f data/with_sense 2>/dev/null || echo 'not linked')"
