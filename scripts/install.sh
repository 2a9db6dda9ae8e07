#!/usr/bin/env bash
# Install sound-detector as a systemd service on Raspberry Pi OS / Debian / Ubuntu.
#
#   sudo bash scripts/install.sh --mqtt-host 192.168.1.10 [--mqtt-user USER --mqtt-password-file FILE]
#
# What it does (docs/service.md):
#   0. an upgrade (a config and a virtualenv exist): the config is checked with the new
#      code first (validate-config); if it fails, nothing is changed
#   1. apt: python3-venv, libportaudio2, libsndfile1, alsa-utils
#   2. a virtualenv in /opt/sound-detector/venv with this checkout pip-installed
#   3. /etc/sound-detector/config.toml from detector/data/config.example.toml
#      (only if absent: an existing config is kept, and the --mqtt-* / --node-id
#      options it did not apply are named; --update-config applies them to it)
#   4. /etc/sound-detector/mqtt_password (mode 600; empty = no password), passed to the
#      service as a systemd credential (LoadCredential=)
#   5. the unit systemd/sound-detector.service, daemon-reload, enable, (re)start: the
#      service always runs the code just installed (--no-start restarts it only if
#      it was running)
#
# Options:
#   --mqtt-host HOST --mqtt-port N --mqtt-user USER --mqtt-password-file FILE --node-id NAME
#                      settings written into a NEW config (enable MQTT, host, ...)
#   --update-config    also write them into an EXISTING config (the old one is kept
#                      as config.toml.bak)
#   --no-start         install and enable, do not start now
#   --no-systemd       do not call systemctl at all (containers, image building, tests)
#   --no-apt           do not install system packages
#   --prefix DIR       staging root (like DESTDIR): files go to DIR/opt, DIR/etc; implies
#                      --no-systemd unless DIR is /
#   --source DIR       project to install (default: the checkout holding this script)
#   --system-site-packages   create the venv with access to system packages
#   --pip-args "ARGS"  extra arguments for pip install (e.g. "--no-deps --no-index")
#   --no-validate      do not check the config with `sound-detector validate-config`
set -euo pipefail

PREFIX=/
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
START=1 SYSTEMD=1 APT=1 VALIDATE=1 SITE="" UPDATE_CONFIG=0
PIP_ARGS=""
MQTT_HOST="" MQTT_PORT="" MQTT_USER="" MQTT_PASSWORD_FILE="" NODE_ID=""

die() { echo "install.sh: error: $*" >&2; exit 2; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) need_value "$@"; PREFIX="$2"; shift 2 ;;
    --source) need_value "$@"; SOURCE="$2"; shift 2 ;;
    --no-start) START=0; shift ;;
    --no-systemd) SYSTEMD=0; shift ;;
    --no-apt) APT=0; shift ;;
    --no-validate) VALIDATE=0; shift ;;
    --update-config) UPDATE_CONFIG=1; shift ;;
    --system-site-packages) SITE="--system-site-packages"; shift ;;
    --pip-args) need_value "$@"; PIP_ARGS="$2"; shift 2 ;;
    --mqtt-host) need_value "$@"; MQTT_HOST="$2"; shift 2 ;;
    --mqtt-port) need_value "$@"; MQTT_PORT="$2"; shift 2 ;;
    --mqtt-user) need_value "$@"; MQTT_USER="$2"; shift 2 ;;
    --mqtt-password-file) need_value "$@"; MQTT_PASSWORD_FILE="$2"; shift 2 ;;
    --node-id) need_value "$@"; NODE_ID="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

PREFIX="${PREFIX%/}"  # "/" -> "" so paths read "$PREFIX/etc/..."
[ -n "$PREFIX" ] && SYSTEMD=0
if [ -z "$PREFIX" ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (sudo bash scripts/install.sh ...), or use --prefix DIR for a staging install"
fi
[ -f "$SOURCE/pyproject.toml" ] || die "--source $SOURCE is not the sound-detector project"
[ -f "$SOURCE/systemd/sound-detector.service" ] || die "$SOURCE/systemd/sound-detector.service is missing"
EXAMPLE="$SOURCE/detector/data/config.example.toml"
[ -f "$EXAMPLE" ] || die "$EXAMPLE is missing"
if [ -n "$MQTT_PASSWORD_FILE" ] && [ ! -f "$MQTT_PASSWORD_FILE" ]; then
  die "--mqtt-password-file $MQTT_PASSWORD_FILE does not exist"
fi
if [ -n "$MQTT_PORT" ] && ! [[ "$MQTT_PORT" =~ ^[0-9]+$ ]]; then
  die "--mqtt-port $MQTT_PORT is not a number"
fi

OPT="$PREFIX/opt/sound-detector"
VENV="$OPT/venv"
ETC="$PREFIX/etc/sound-detector"
CONF="$ETC/config.toml"
CRED="$ETC/mqtt_password"
UNIT_DIR="$PREFIX/etc/systemd/system"

step() { echo "==> $*"; }

render_config() {  # SRC DST: SRC with the service defaults and the --mqtt-*/--node-id options
  MQTT_HOST="$MQTT_HOST" MQTT_PORT="$MQTT_PORT" MQTT_USER="$MQTT_USER" NODE_ID="$NODE_ID" \
  FRESH="$3" python3 - "$1" "$2" <<'PY'
import json, os, re, sys

src, dst = sys.argv[1], sys.argv[2]
lines = open(src, encoding="utf-8").read().splitlines()

def put(section, key, value):
    """Set `key = value` in [section]: replace the (possibly commented) line or append."""
    start = next((i for i, l in enumerate(lines) if l.strip() == f"[{section}]"), None)
    if start is None:
        lines.extend(["", f"[{section}]"])
        start = len(lines) - 1
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    pattern = re.compile(rf"^#?\s*{re.escape(key)}\s*=")
    for i in range(start + 1, end):
        if pattern.match(lines[i]):
            lines[i] = f"{key} = {value}"
            return
    lines.insert(end, f"{key} = {value}")

q = json.dumps  # a JSON string is a valid TOML basic string
if os.environ["FRESH"] == "1":
    # Service defaults: the outbox on disk in the state directory, no JSON lines on
    # stdout (journald keeps the logs).
    put("mqtt", "queue_path", q("/var/lib/sound-detector/outbox.sqlite"))
    put("output", "stdout_json", "false")
if os.environ["MQTT_HOST"]:
    put("mqtt", "enabled", "true")
    put("mqtt", "host", q(os.environ["MQTT_HOST"]))
if os.environ["MQTT_PORT"]:
    put("mqtt", "port", str(int(os.environ["MQTT_PORT"])))
if os.environ["MQTT_USER"]:
    put("mqtt", "username", q(os.environ["MQTT_USER"]))
if os.environ["NODE_ID"]:
    put("mqtt", "node_id", q(os.environ["NODE_ID"]))
open(dst, "w", encoding="utf-8").write("\n".join(lines) + "\n")
PY
}

# The config the service will run with, composed before anything is changed.
NEW_CONF="$(mktemp)"
trap 'rm -f "$NEW_CONF"' EXIT
OPTIONS=""
[ -n "$MQTT_HOST" ] && OPTIONS="$OPTIONS --mqtt-host $MQTT_HOST"
[ -n "$MQTT_PORT" ] && OPTIONS="$OPTIONS --mqtt-port $MQTT_PORT"
[ -n "$MQTT_USER" ] && OPTIONS="$OPTIONS --mqtt-user $MQTT_USER"
[ -n "$NODE_ID" ] && OPTIONS="$OPTIONS --node-id $NODE_ID"
if [ ! -e "$CONF" ]; then
  render_config "$EXAMPLE" "$NEW_CONF" 1
elif [ "$UPDATE_CONFIG" -eq 1 ]; then
  render_config "$CONF" "$NEW_CONF" 0
else
  cp "$CONF" "$NEW_CONF"
fi

validate() {  # PYTHON: validate-config of the composed config with this checkout's code
  PYTHONPATH="$SOURCE${PYTHONPATH:+:$PYTHONPATH}" "$1" -m detector validate-config "$NEW_CONF"
}
VALIDATED=0
if [ "$VALIDATE" -eq 1 ] && [ -e "$CONF" ] && [ -x "$VENV/bin/python" ]; then
  step "validate-config (before changing anything)"
  validate "$VENV/bin/python" || die "the config does not pass with the new version" \
    "(see above); nothing was changed: fix $CONF and run install.sh again"
  VALIDATED=1
fi

if [ "$APT" -eq 1 ]; then
  step "system packages (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    python3 python3-venv python3-pip libportaudio2 libsndfile1 alsa-utils >/dev/null
fi

step "virtualenv $VENV"
mkdir -p "$OPT"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv $SITE "$VENV"
fi
# shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
"$VENV/bin/python" -m pip install -q --disable-pip-version-check $PIP_ARGS "$SOURCE"
[ -x "$VENV/bin/sound-detector" ] || die "pip did not install the sound-detector command"
# `sudo sound-detector enroll ...` works: /usr/local/bin is on sudo's secure_path
install -d -m 755 "$PREFIX/usr/local/bin"
ln -sfn /opt/sound-detector/venv/bin/sound-detector "$PREFIX/usr/local/bin/sound-detector"
# the unit's Documentation= (systemctl help sound-detector) and offline reading
if [ -d "$SOURCE/docs" ]; then
  install -d -m 755 "$OPT/docs"
  cp -r "$SOURCE/docs/." "$OPT/docs/"
fi

if [ "$VALIDATE" -eq 1 ] && [ "$VALIDATED" -eq 0 ]; then
  step "validate-config"
  validate "$VENV/bin/python" || die "the config does not pass (see above);" \
    "the program is installed, the config, credential and service are unchanged"
fi

step "configuration $CONF"
install -d -m 755 "$ETC"
if [ ! -e "$CONF" ]; then
  install -m 644 "$NEW_CONF" "$CONF"
  echo "    wrote $CONF"
elif [ "$UPDATE_CONFIG" -eq 1 ] && ! cmp -s "$NEW_CONF" "$CONF"; then
  cp -p "$CONF" "$CONF.bak"
  install -m 644 "$NEW_CONF" "$CONF"
  echo "    applied${OPTIONS} to $CONF (the old one is $CONF.bak)"
else
  echo "    keeping the existing $CONF (never overwritten)"
  if [ -n "$OPTIONS" ] && [ "$UPDATE_CONFIG" -eq 0 ]; then
    echo "    NOT applied, because a config exists:${OPTIONS}"
    echo "    (edit $CONF, or run install.sh again with --update-config)"
  fi
fi

step "MQTT password credential $CRED"
if [ -n "$MQTT_PASSWORD_FILE" ]; then
  install -m 600 "$MQTT_PASSWORD_FILE" "$CRED"
  echo "    installed from $MQTT_PASSWORD_FILE"
elif [ ! -e "$CRED" ]; then
  install -m 600 /dev/null "$CRED"  # LoadCredential= needs the file; empty = no password
  echo "    created empty (no password); write it with: sudo install -m 600 FILE $CRED"
else
  chmod 600 "$CRED"
  echo "    keeping the existing credential"
fi

step "systemd unit $UNIT_DIR/sound-detector.service"
install -d -m 755 "$UNIT_DIR"
install -m 644 "$SOURCE/systemd/sound-detector.service" "$UNIT_DIR/sound-detector.service"

if [ "$SYSTEMD" -eq 1 ]; then
  step "systemctl"
  systemctl daemon-reload
  if [ "$START" -eq 1 ]; then
    systemctl enable sound-detector.service
    systemctl restart sound-detector.service  # starts it, or restarts it after an update
    systemctl --no-pager --lines=0 status sound-detector.service || true
  else
    systemctl enable sound-detector.service
    # a running service restarts on the code just installed; a stopped one stays stopped
    systemctl try-restart sound-detector.service
    echo "    enabled (restarted if it was running); start it with: sudo systemctl start sound-detector"
  fi
else
  echo "==> systemctl skipped (--no-systemd or --prefix)"
fi

cat <<EOF
Done. Next:
  edit $CONF (then: sudo systemctl restart sound-detector)
  logs:   journalctl -u sound-detector -f
  events: mosquitto_sub -h <broker> -t 'sound-detector/#' -v
EOF
