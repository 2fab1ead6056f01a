#!/usr/bin/env bash
# Validates docker-compose.yml with `docker compose config`, or Debian's docker-compose where the
# compose plugin is missing (no Docker engine is needed for either).
set -euo pipefail
cd "$(dirname "$0")/.."
if docker compose version >/dev/null 2>&1; then
  exec docker compose config --quiet
fi
if ! command -v docker-compose >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >/dev/null && apt-get install -y -qq docker-compose >/dev/null
  else
    echo "compose-check: neither 'docker compose' nor 'docker-compose' is installed" >&2
    exit 1
  fi
fi
docker-compose config --quiet
echo "docker-compose.yml is valid"
