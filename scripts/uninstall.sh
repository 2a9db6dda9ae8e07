#!/usr/bin/env bash
# Remove the sound-detector service installed by scripts/install.sh.
#
#   sudo bash scripts/uninstall.sh           # keeps /etc/sound-detector and the state
#   sudo bash scripts/uninstall.sh --purge   # also deletes config, credential, queue, clips
#
# Options: --purge, --no-systemd (do not call systemctl), --prefix DIR (staging root
# used with install.sh --prefix; implies --no-systemd unless DIR is /),
# --keep-homeassistant (do not remove the node's Home Assistant device and retained
# MQTT topics from the broker; by default `sound-detector homeassistant --remove` runs).
set -euo pipefail

PREFIX=/ PURGE=0 SYSTEMD=1 HA_REMOVE=1
die() { echo "uninstall.sh: error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a value"; PREFIX="$2"; shift 2 ;;
    --purge) PURGE=1; shift ;;
    --no-systemd) SYSTEMD=0; shift ;;
    --keep-homeassistant) HA_REMOVE=0; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
PREFIX="${PREFIX%/}"
[ -n "$PREFIX" ] && SYSTEMD=0
if [ -z "$PREFIX" ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (sudo bash scripts/uninstall.sh), or use --prefix DIR"
fi

UNIT="$PREFIX/etc/systemd/system/sound-detector.service"
if [ "$SYSTEMD" -eq 1 ] && command -v systemctl >/dev/null; then
  systemctl disable --now sound-detector.service 2>/dev/null || true
fi
rm -f "$UNIT"
if [ "$SYSTEMD" -eq 1 ] && command -v systemctl >/dev/null; then
  systemctl daemon-reload || true
fi

# With the service stopped (it would publish again), remove the node from the broker:
# its Home Assistant discovery (the device disappears) and its retained topics.
BIN="$PREFIX/opt/sound-detector/venv/bin/sound-detector"
CONF="$PREFIX/etc/sound-detector/config.toml"
if [ "$HA_REMOVE" -eq 1 ] && [ -x "$BIN" ] && [ -f "$CONF" ]; then
  if grep -Eq '^[[:space:]]*enabled[[:space:]]*=[[:space:]]*true' <(sed -n '/^\[mqtt\]/,/^\[/p' "$CONF"); then
    # the credential install.sh wrote is read as systemd would hand it to the service
    if ! CREDENTIALS_DIRECTORY="$PREFIX/etc/sound-detector" "$BIN" homeassistant --remove --config "$CONF"; then
      # keep the program that can still do it: the service is stopped and disabled
      die "could not remove the node from the broker (see above); the service is" \
          "stopped and its unit removed, the program kept: run uninstall.sh again once" \
          "the broker is reachable, or add --keep-homeassistant to leave the node there"
    fi
  fi
fi

rm -rf "$PREFIX/opt/sound-detector"
if [ -L "$PREFIX/usr/local/bin/sound-detector" ]; then
  rm -f "$PREFIX/usr/local/bin/sound-detector"  # the link install.sh made
fi
echo "removed the service ($UNIT) and $PREFIX/opt/sound-detector"

if [ "$PURGE" -eq 1 ]; then
  # DynamicUser= keeps the state in /var/lib/private/sound-detector behind a symlink
  rm -rf "$PREFIX/etc/sound-detector" "$PREFIX/var/lib/sound-detector" \
         "$PREFIX/var/lib/private/sound-detector"
  echo "purged $PREFIX/etc/sound-detector and $PREFIX/var/lib/sound-detector (config, credential, queue, clips)"
else
  echo "kept $PREFIX/etc/sound-detector and $PREFIX/var/lib/sound-detector (use --purge to delete them)"
fi
