#!/usr/bin/env bash
# The README's test command: installs what the tests need into ./.venv (first run) and runs the default
# test suite (CPU; GPU tests skip without CUDA; `-m slow` tests are documented in the README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import importlib.util as u, fastism_torch, pytest, onnx2torch, tensorflow, tangermeme, modiscolite, pyBigWig; assert u.find_spec('fastism')" >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q --upgrade pip
    # the library asks for ranges; the tests run the versions verified together (constraints.txt)
    .venv/bin/python -m pip install -q -c constraints.txt -e ".[test,keras,onnx]"
    # the original fastISM's reference models (Keras); its pinned dependencies are too old to resolve
    .venv/bin/python -m pip install -q --no-deps fastism==0.5.1
fi
# the field's own model packages for tests/test_zoo.py (pinned, --no-deps; skips what is already there)
bash scripts/install_zoo.sh .venv/bin/python
export FASTISM_PINNED_ENV=1     # tests/test_packaging.py checks the installed set against constraints.txt
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
