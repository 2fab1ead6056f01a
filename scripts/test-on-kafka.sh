#!/usr/bin/env bash
# Runs a command (the integration tests) against Apache Kafka (KRaft, one node, Maven Central jars)
# started on loopback for the occasion, and stops the broker afterwards whatever the outcome.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="$(mktemp -d "${TMPDIR:-/tmp}/llm-router-kafka.XXXXXX")"
cleanup() { "$here/kafka.sh" stop --dir "$dir" || true; rm -rf "$dir"; }
trap cleanup EXIT
bootstrap="$("$here/kafka.sh" start --dir "$dir" | tail -n 1)"
echo "Apache Kafka on $bootstrap" >&2
# LLM_ROUTER_TEST_KAFKA_DIR lets the reliability suite restart this broker (scripts/kafka.sh stop/start --dir).
KAFKA_BOOTSTRAP_SERVERS="$bootstrap" LLM_ROUTER_TEST_KAFKA_DIR="$dir" "$@"
