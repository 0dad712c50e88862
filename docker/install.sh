#!/bin/sh
# pip install "$@" into the image's venv: only from /wheelhouse when it holds wheels (an offline
# build, the wheelhouse made on the host by scripts/compose_test.py), else from the package index.
set -eu
if ls /wheelhouse/*.whl >/dev/null 2>&1; then
  pip install --no-index --find-links /wheelhouse "$@"
else
  pip install "$@"
fi
