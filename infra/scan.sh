#!/usr/bin/env bash
# Static analysis of the deployment material under infra/ (Kubernetes manifests, and secrets in any file)
# with checkov, in a venv of its own: checkov's large dependency tree never enters the project's .venv.
#
#   infra/scan.sh            # exit 0: no finding, or only the skips explained in infra/.checkov.yaml
#
# The first run makes .venv-scan/ (python3.11, checkov CHECKOV_VERSION, every other package as pinned in
# infra/scan.lock; needs PyPI); later runs reuse it. The scan itself needs no network.
set -euo pipefail

CHECKOV_VERSION=3.3.30
PYTHON=${PYTHON:-python3.11}
cd "$(dirname "$0")/.."
VENV=.venv-scan
STAMP="$VENV/.installed-$(cat infra/scan.lock | sha1sum | cut -c1-12)-$CHECKOV_VERSION"

if [ ! -f "$STAMP" ]; then
    command -v "$PYTHON" >/dev/null || { echo "$PYTHON not found; set PYTHON=/path/to/python3.11" >&2; exit 2; }
    echo "making $VENV with checkov $CHECKOV_VERSION ..." >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    if [ -n "${CHECKOV_UNLOCKED:-}" ]; then  # to regenerate infra/scan.lock
        "$VENV/bin/python" -m pip install --quiet --progress-bar off "checkov==$CHECKOV_VERSION"
    else
        "$VENV/bin/python" -m pip install --quiet --progress-bar off -c infra/scan.lock "checkov==$CHECKOV_VERSION"
    fi
    touch "$STAMP"
fi

# Findings print as "Check: CKV_..."; checkov exits 1 when any check fails that .checkov.yaml does not skip.
exec "$VENV/bin/checkov" --config-file infra/.checkov.yaml "$@"
