#!/usr/bin/env bash
# Install the edge-runtime daemon on a board: Raspberry Pi OS (Bookworm, 64- or 32-bit) or a
# Jetson (Ubuntu / JetPack). Creates a venv in /opt/edge-runtime, the config in /etc/edge-runtime,
# the state directory /var/lib/edge-runtime, the `edge-runtime` system user and a systemd unit.
#
# --root DIR stages every file under DIR instead of / (for packaging and tests). What cannot be
# staged (the system user, file ownership, systemctl) is written to
# DIR/opt/edge-runtime/share/edge-runtime/post-install.sh for the target to run.
#
# Environment:
#   EDGE_VENV_PYTHON        python used to create the venv (default: python3, needs >= 3.10)
#   EDGE_PIP_ARGS           extra pip arguments, e.g. "--no-index --find-links /media/wheels"
#   EDGE_VENV_SYSTEM_SITE=1 let the venv see system packages (e.g. JetPack's OpenCV)
set -euo pipefail

readonly SERVICE_USER="edge-runtime"
readonly OPT_DIR="/opt/edge-runtime"
readonly ETC_DIR="/etc/edge-runtime"
readonly STATE_DIR="/var/lib/edge-runtime"
readonly UNIT_PATH="/etc/systemd/system/edge-runtime.service"
readonly CONFIG_PATH="$ETC_DIR/config.yaml"
readonly POST_INSTALL_REL="share/edge-runtime/post-install.sh"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO

ROOT=""
START=1
WITH_MOSQUITTO=0
CONFIG_TEMPLATE=""
WORK=""

say() { printf '==> %s\n' "$*"; }
note() { printf '    note: %s\n' "$*"; }
die() {
    printf 'install-device: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    cat <<'EOF'
Usage: install-device.sh [--root DIR] [--no-start] [--with-mosquitto] [--config-template FILE]

  --root DIR              stage every file under DIR instead of / (no user, no systemctl)
  --no-start              install but do not enable or start the service
  --with-mosquitto        also install the Mosquitto MQTT broker (apt-get)
  --config-template FILE  config to install when /etc/edge-runtime/config.yaml does not exist
  -h, --help              show this help
EOF
}

parse_args() {
    while (($#)); do
        case "$1" in
            --root)
                (($# >= 2)) || die "--root needs a directory"
                ROOT="$2"
                shift 2
                ;;
            --no-start) START=0 && shift ;;
            --with-mosquitto) WITH_MOSQUITTO=1 && shift ;;
            --config-template)
                (($# >= 2)) || die "--config-template needs a file"
                CONFIG_TEMPLATE="$2"
                shift 2
                ;;
            -h | --help) usage && exit 0 ;;
            *)
                usage >&2
                printf 'install-device: error: unknown option %s\n' "$1" >&2
                exit 2
                ;;
        esac
    done
    if [[ -n "$ROOT" ]]; then
        mkdir -p "$ROOT" || die "cannot create --root $ROOT"
        ROOT="$(cd "$ROOT" && pwd -P)"
        [[ "$ROOT" != "/" ]] || ROOT=""
    fi
    if [[ -n "$CONFIG_TEMPLATE" && ! -f "$CONFIG_TEMPLATE" ]]; then
        die "config template $CONFIG_TEMPLATE does not exist"
    fi
}

staging() { [[ -n "$ROOT" ]]; }

describe_board() {
    local os="unknown OS" board="" arch
    arch="$(uname -m)"
    if [[ -r /etc/os-release ]]; then
        os="$(. /etc/os-release && printf '%s' "${PRETTY_NAME:-${ID:-unknown OS}}")"
    fi
    if [[ -r /proc/device-tree/model ]]; then
        board="$(tr -d '\0' </proc/device-tree/model)"
    fi
    [[ -e /etc/nv_tegra_release ]] && board="${board:-NVIDIA Jetson} (JetPack)"
    say "Installing edge-runtime on ${board:-this machine}: $os, $arch"
    if [[ "$arch" == armv7l || "$arch" == armv6l ]]; then
        note "32-bit userland: LiteRT has no wheel for $arch; the daemon falls back to" \
            "tflite-runtime, which needs numpy<2 (add it with EDGE_PIP_ARGS or a 64-bit OS)"
    fi
}

check_privileges() {
    if ! staging && ((EUID != 0)); then
        die "run as root (sudo $0 ...) or stage the files with --root DIR"
    fi
}

find_python() {
    PYTHON="${EDGE_VENV_PYTHON:-python3}"
    command -v "$PYTHON" >/dev/null ||
        die "$PYTHON not found; set EDGE_VENV_PYTHON to a python >= 3.10"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
        die "$PYTHON is $("$PYTHON" -V 2>&1); edge-runtime needs >= 3.10 (set EDGE_VENV_PYTHON)"
    if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
        if staging || ! command -v apt-get >/dev/null; then
            die "$PYTHON cannot create venvs; install the python3-venv package"
        fi
        say "Installing python3-venv"
        apt-get install -y python3-venv
    fi
}

make_dirs() {
    install -d -m 0755 "$ROOT$OPT_DIR" "$ROOT/etc/systemd/system" "$(dirname "$ROOT$STATE_DIR")"
    # The config may hold broker passwords: readable by root and the service group only.
    install -d -m 0750 "$ROOT$ETC_DIR" "$ROOT$STATE_DIR"
    # Public keys of bundle signers; root-owned so the daemon cannot add its own.
    install -d -m 0755 "$ROOT$ETC_DIR/trusted-keys"
}

make_venv() {
    local venv="$ROOT$OPT_DIR" args=()
    [[ "${EDGE_VENV_SYSTEM_SITE:-0}" == 1 ]] && args+=(--system-site-packages)
    if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c 'import sys' 2>/dev/null; then
        say "Reusing the venv in $venv"
        return
    fi
    say "Creating a venv in $venv with $PYTHON"
    "$PYTHON" -m venv --clear ${args[@]+"${args[@]}"} "$venv"
}

copy_source() {
    # pip builds in the source tree; a copy keeps build/ and *.egg-info out of the repository.
    local src="$WORK/src"
    mkdir -p "$src"
    tar -C "$REPO" -cf - \
        --exclude=./.git --exclude=./.venv --exclude=./venv --exclude=./build --exclude=./dist \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude='.*_cache' \
        --exclude=./tests --exclude=./samples --exclude=./benchmarks . |
        tar -C "$src" -xf -
    printf '%s' "$src"
}

install_package() {
    local venv="$ROOT$OPT_DIR" src pip_extra=()
    read -r -a pip_extra <<<"${EDGE_PIP_ARGS:-}"
    src="$(copy_source)"
    say "Installing edge-runtime from $REPO into $venv (device dependencies, no TensorFlow)"
    (cd / && "$venv/bin/python" -m pip install --disable-pip-version-check --no-input \
        ${pip_extra[@]+"${pip_extra[@]}"} "$src") || die "pip install failed (see above)"
    if (cd / && "$venv/bin/python" -c 'import tensorflow' 2>/dev/null); then
        note "tensorflow is importable in the venv (system site packages?); the daemon ignores it"
    fi
}

relocate_venv() {
    # Scripts in a venv name their interpreter by absolute path; a staged venv must name the
    # path it will have on the target.
    staging || return 0
    local file pattern
    pattern="$(printf '%s' "$ROOT$OPT_DIR" | sed 's/[][\\.*^$#/]/\\&/g')"
    for file in "$ROOT$OPT_DIR"/bin/*; do
        [[ -f "$file" && ! -L "$file" ]] || continue
        if grep -qF "$ROOT$OPT_DIR" "$file"; then
            sed -i "s#$pattern#$OPT_DIR#g" "$file"
        fi
    done
}

default_config() {
    cat <<'EOF'
# edge-runtime configuration. Check it with:
#   /opt/edge-runtime/bin/edge-runtime check-config /etc/edge-runtime/config.yaml
# device_id defaults to the host name.
mqtt:
  url: mqtt://127.0.0.1:1883
# Public keys (from `edge-convert keygen`) whose signed bundles this board accepts:
# trusted_keys:
#   - /etc/edge-runtime/trusted-keys/edge-signing.pub
pipelines:
  - name: default
    # A bundle directory or packed .tar.gz copied to the board.
    bundle: /var/lib/edge-runtime/bundles/CHANGE-ME
    # Camera 0; or /dev/video0, picamera2, rtsp://..., serial:///dev/ttyUSB0?baud=115200
    source: "0"
EOF
}

install_config() {
    local target="$ROOT$CONFIG_PATH" template="$CONFIG_TEMPLATE"
    [[ -n "$template" ]] || template="$REPO/edge_runtime/templates/config.yaml"
    if [[ -f "$template" ]]; then
        install -m 0644 "$template" "$ROOT$CONFIG_PATH.example"
    else
        note "no config template at $template; using a minimal placeholder"
        default_config >"$WORK/config.yaml"
        install -m 0644 "$WORK/config.yaml" "$ROOT$CONFIG_PATH.example"
    fi
    if [[ -e "$target" ]]; then
        say "Keeping the existing $CONFIG_PATH (the new template is $CONFIG_PATH.example)"
        return
    fi
    say "Writing $CONFIG_PATH"
    install -m 0640 "$ROOT$CONFIG_PATH.example" "$target"
}

install_unit() {
    local venv="$ROOT$OPT_DIR" unit="$WORK/edge-runtime.service"
    # Run the script with the venv's python: a staged venv's shebangs name the target path.
    if (cd / && "$venv/bin/python" "$venv/bin/edge-runtime" service-unit --config "$CONFIG_PATH") \
        >"$unit" 2>"$WORK/cli.err"; then
        :
    elif (cd / && "$venv/bin/python" -m edge_runtime.system.service --config "$CONFIG_PATH") >"$unit"; then
        note "unit rendered by python -m edge_runtime.system.service (CLI: $(tail -n 1 "$WORK/cli.err"))"
    else
        die "cannot render the systemd unit"
    fi
    grep -q '^ExecStart=' "$unit" || die "the rendered systemd unit has no ExecStart"
    say "Writing $UNIT_PATH"
    install -m 0644 "$unit" "$ROOT$UNIT_PATH"
}

post_install_script() {
    cat <<EOF
#!/bin/sh
# edge-runtime post-install: the steps that need the target system itself. Safe to re-run.
set -eu
for group in video dialout; do
    getent group "\$group" >/dev/null || groupadd --system "\$group"
done
if ! getent passwd $SERVICE_USER >/dev/null; then
    if getent group $SERVICE_USER >/dev/null; then
        group_opt="--gid $SERVICE_USER"
    else
        group_opt="--user-group"
    fi
    useradd --system \$group_opt --home-dir $STATE_DIR --no-create-home \\
        --shell /usr/sbin/nologin --comment "edge-runtime daemon" $SERVICE_USER
fi
usermod --append --groups video,dialout $SERVICE_USER
# plugdev grants the Coral USB accelerator where its udev rule uses that group.
if getent group plugdev >/dev/null; then usermod --append --groups plugdev $SERVICE_USER; fi
chown -R $SERVICE_USER:$SERVICE_USER $STATE_DIR
chown root:$SERVICE_USER $ETC_DIR $CONFIG_PATH
EOF
}

write_post_install() {
    local target="$ROOT$OPT_DIR/$POST_INSTALL_REL"
    install -d -m 0755 "$(dirname "$target")"
    post_install_script >"$WORK/post-install.sh"
    install -m 0755 "$WORK/post-install.sh" "$target"
    if staging; then
        note "not creating the $SERVICE_USER user or setting ownership under --root;" \
            "run $OPT_DIR/$POST_INSTALL_REL on the target"
        return
    fi
    say "Creating the $SERVICE_USER user (groups video, dialout) and setting ownership"
    sh "$target"
}

install_mosquitto() {
    ((WITH_MOSQUITTO)) || return 0
    if staging; then
        note "not installing Mosquitto under --root; on the target: apt-get install -y mosquitto"
        return
    fi
    say "Installing Mosquitto (listens on localhost only by default)"
    apt-get install -y mosquitto mosquitto-clients
}

start_service() {
    if staging; then
        note "not running systemctl under --root; on the target:" \
            "systemctl daemon-reload && systemctl enable --now edge-runtime"
        return
    fi
    if ! command -v systemctl >/dev/null || [[ ! -d /run/systemd/system ]]; then
        note "systemd is not running here; start the daemon yourself"
        return
    fi
    systemctl daemon-reload
    if ((!START)); then
        note "not started (--no-start); when ready: systemctl enable --now edge-runtime"
        return
    fi
    say "Enabling and (re)starting edge-runtime"
    systemctl enable edge-runtime
    # restart, not start: a reinstall must run the new code.
    systemctl restart edge-runtime ||
        note "the service did not start; see: journalctl -u edge-runtime -e"
}

next_steps() {
    local where=""
    staging && where=" (staged under $ROOT)"
    cat <<EOF

edge-runtime is installed$where.
Next:
  1. Edit $CONFIG_PATH: device id, MQTT broker, bundle and source.
  2. Check it:  sudo -u $SERVICE_USER $OPT_DIR/bin/edge-runtime check-config $CONFIG_PATH
  3. Put a bundle in $STATE_DIR/bundles, or send one with: edge-convert deploy ... (until
     then the service runs, reports online, and its pipeline waits for a model).
     Trusted signing keys go in $ETC_DIR/trusted-keys/.
  4. Restart and follow:  sudo systemctl restart edge-runtime && journalctl -u edge-runtime -f
  5. See the results:  mosquitto_sub -v -t 'edge/#'
EOF
}

main() {
    parse_args "$@"
    check_privileges
    WORK="$(mktemp -d)"
    trap 'rm -rf "$WORK"' EXIT
    describe_board
    find_python
    make_dirs
    make_venv
    install_package
    install_config
    install_unit
    relocate_venv
    write_post_install
    install_mosquitto
    start_service
    next_steps
}

main "$@"
