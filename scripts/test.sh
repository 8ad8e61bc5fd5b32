#!/usr/bin/env bash
# The one test command: venv, install, Mosquitto, then ruff, mypy and pytest.
#   scripts/test.sh [pytest args...]   everything: unit, converter, integration, e2e (< 10 min)
#   scripts/test.sh --fast [args...]   the unit tier only (no TensorFlow, no broker; < 1 min)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
FAST=0
if [[ "${1:-}" == "--fast" ]]; then
    FAST=1
    shift
fi

if [[ ! -x .venv/bin/python ]]; then
    echo "==> creating .venv"
    "$PY" -m venv .venv
fi
# Installing again is skipped while pyproject.toml is unchanged since the last install.
STAMP=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [[ ! -f "$STAMP" ]]; then
    echo "==> installing edge-runtime[convert,optimize,broker,dev]"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e ".[convert,optimize,broker,dev]"
    rm -f .venv/.installed-*
    touch "$STAMP"
fi

if [[ $FAST -eq 1 ]]; then
    echo "==> ruff"
    .venv/bin/ruff check edge_runtime converters tests benchmarks scripts
    echo "==> pytest tests/unit"
    exec .venv/bin/pytest -q -p no:cacheprovider tests/unit "$@"
fi

MOSQUITTO=$(command -v mosquitto || true)
[[ -z "$MOSQUITTO" && -x /usr/sbin/mosquitto ]] && MOSQUITTO=/usr/sbin/mosquitto
if [[ -z "$MOSQUITTO" ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "==> installing Mosquitto (Debian packages)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            mosquitto mosquitto-clients >/dev/null
        MOSQUITTO=/usr/sbin/mosquitto
    elif [[ "${CI:-}" == "true" ]]; then
        echo "error: Mosquitto is missing and cannot be installed (not root or no apt-get)" >&2
        exit 1
    else
        echo "warning: Mosquitto not found; broker tests will be skipped" >&2
    fi
fi
# Debian's package starts a system broker on :1883; the tests start their own on free ports.
export EDGE_MOSQUITTO="${MOSQUITTO}"

echo "==> ruff"
.venv/bin/ruff check edge_runtime converters tests benchmarks scripts
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
.venv/bin/pytest -q -p no:cacheprovider "$@"
