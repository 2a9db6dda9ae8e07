#!/usr/bin/env bash
# System packages the test suite and the docs use for real: a Mosquitto broker and its
# command-line clients (mosquitto_sub/mosquitto_pub, used in docs/), PulseAudio (a
# FIFO-backed virtual microphone for real PortAudio capture), PortAudio, sox/flac.
#
# Another apt process (unattended-upgrades on a Raspberry Pi, a desktop's updater) may
# hold the package lock: apt is asked to wait for it, and a step that still finds it
# taken is retried, for at most APT_LOCK_WAIT_SECONDS (default 600) in all.
set -euo pipefail
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
WAIT="${APT_LOCK_WAIT_SECONDS:-600}"
pkgs="mosquitto mosquitto-clients pulseaudio pulseaudio-utils libportaudio2 libasound2-plugins libsndfile1 sox flac systemd openssl python3-venv"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
[ -n "$missing" ] || exit 0

deadline=$(( $(date +%s) + WAIT ))
apt_wait() {  # apt-get ARGS...: waits for the lock, retries while it is held, bounded
  local err; err=$(mktemp)
  while :; do
    local left=$(( deadline - $(date +%s) )); [ "$left" -gt 0 ] || left=1
    # dpkg needs /usr/sbin (ldconfig, start-stop-daemon) even when a plain PATH lacks it
    if $SUDO env PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout="$left" "$@" >/dev/null 2>"$err"; then
      rm -f "$err"; return 0
    fi
    if grep -qiE "could not get lock|unable to lock|is another process using it" "$err" \
        && [ "$(date +%s)" -lt "$deadline" ]; then
      echo "setup-test-deps: apt is busy (another package manager holds its lock); waiting" >&2
      sleep 5
      continue
    fi
    if grep -qiE "could not get lock|unable to lock" "$err"; then
      echo "setup-test-deps: apt's lock was still held after ${WAIT}s (APT_LOCK_WAIT_SECONDS);" \
           "let the other package manager finish, then run this again" >&2
    else
      cat "$err" >&2
    fi
    rm -f "$err"; return 1
  done
}
apt_wait update -qq
apt_wait install -y -qq --no-install-recommends $missing
# The Debian package starts a system broker on 1883; tests start their own on free ports.
