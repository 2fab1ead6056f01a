#!/usr/bin/env bash
# Prints the Python that `make` builds .venv with: the first of python3.12, python3.13 (on PATH, or
# installed by pyenv) that runs, else python3. From 3.12 asyncio has eager tasks, with which a job
# that needs no I/O runs to its end without a turn of the event loop (worker/pipeline/consume.py).
set -u
pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
for candidate in python3.12 python3.13 "$pyenv_root"/versions/3.12*/bin/python "$pyenv_root"/versions/3.13*/bin/python; do
  if "$candidate" -c 'import sys; assert sys.version_info >= (3, 12)' >/dev/null 2>&1; then
    echo "$candidate"
    exit 0
  fi
done
echo python3
