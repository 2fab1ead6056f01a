#!/usr/bin/env bash
# Debian's redis-server for the shared rate limiter's tests (they start their own on loopback).
#   scripts/redis.sh install   install it when missing (apt-get; needs root or sudo)
set -euo pipefail
case "${1:-install}" in
  install)
    if command -v redis-server >/dev/null; then exit 0; fi
    echo "installing redis-server (Debian package) for the shared rate limiter's tests" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
    command -v redis-server >/dev/null || { echo "redis-server still missing after apt-get install" >&2; exit 1; }
    ;;
  *) echo "usage: $0 install" >&2; exit 2 ;;
esac
