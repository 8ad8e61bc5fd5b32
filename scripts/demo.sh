#!/usr/bin/env bash
# The main job end to end, on an embedded broker (no Mosquitto needed):
# train the digits sample model on real handwritten digits, convert it to an int8 bundle for a
# Raspberry Pi 4, start a broker, run the daemon over the sample images, watch the results arrive.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=${EDGE_DEMO_DIR:-.demo}
PIDS=()
cleanup() {
    for pid in "${PIDS[@]:-}"; do
        [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if [[ ! -x .venv/bin/python ]]; then
    step "creating .venv"
    "$PY" -m venv .venv
fi
step "installing edge-runtime with the converter and the embedded broker"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[convert,broker]"
BIN=.venv/bin

step "training the digits sample model on scikit-learn's handwritten digits"
"$BIN/python" -m converters.samples digits "$WORK/digits" --no-video 2>/dev/null

step "converting it to an int8 bundle for rpi4 (calibrate, quantize, verify, gate)"
"$BIN/edge-convert" convert "$WORK/digits/digits.keras" --profile rpi4 \
    --calibration "$WORK/digits/images/train" --validation "$WORK/digits/images/val" \
    --labels "$WORK/digits/labels.txt" --input-mean 0 --input-std 255 --color GRAY \
    --name digits --out "$WORK/bundles"
BUNDLE="$WORK/bundles/digits-rpi4"

PORT=$("$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="mqtt://127.0.0.1:$PORT"
step "starting the embedded broker on $URL"
"$BIN/edge-runtime" broker --port "$PORT" 2>"$WORK/broker.log" &
PIDS+=($!)
for _ in $(seq 50); do
    "$BIN/python" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" \
        2>/dev/null && break
    sleep 0.1
done

IMAGES="$WORK/digits/images/val"
COUNT=$(find "$IMAGES" -name '*.png' | wc -l)
step "running the daemon over $COUNT sample images; results as they arrive (1 in 25 shown)"
"$BIN/python" scripts/demo_view.py "$URL" demo-pi "$COUNT" > "$WORK/view.log" &
VIEW=$!
PIDS+=($VIEW)
for _ in $(seq 100); do grep -q READY "$WORK/view.log" 2>/dev/null && break; sleep 0.1; done
tail -n +2 -f "$WORK/view.log" &
PIDS+=($!)
"$BIN/edge-runtime" run --bundle "$BUNDLE" --source "$IMAGES" --mqtt "$URL" \
    --device-id demo-pi --state-dir "$WORK/state" 2>"$WORK/daemon.log"
wait "$VIEW" || true
sleep 0.3

step "done"
echo "bundle:  $BUNDLE  (open $BUNDLE/report.html for the conversion report)"
echo "logs:    $WORK/daemon.log, $WORK/broker.log"
echo "next:    edge-runtime watch --mqtt $URL --device-id demo-pi   (while a daemon runs)"
