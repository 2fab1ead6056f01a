#!/usr/bin/env bash
# Apache Kafka (KRaft, one combined broker+controller node) on loopback, from Maven Central jars.
#
#   scripts/kafka.sh fetch                          fetch the jars (once; cached)
#   scripts/kafka.sh start [--port N] --dir DIR     format DIR if new, start, wait, print host:port
#   scripts/kafka.sh stop --dir DIR                 stop the broker started in DIR
#
# Data stays in DIR, so a stop and a start on the same DIR keep topics, messages and offsets.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
pom="$here/kafka-pom.xml"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")"
cache="${KAFKA_JARS_CACHE:-$HOME/.cache/llm-router/kafka-$version}"
libs="$cache/libs"

die() { echo "kafka.sh: $*" >&2; exit 1; }

fetch() {
  [ -f "$libs/.complete" ] && return 0
  command -v mvn >/dev/null || die "mvn is needed to fetch the Kafka jars from Maven Central (apt-get install maven)"
  command -v java >/dev/null || die "java (17 or later) is needed to run Kafka (apt-get install openjdk-17-jre-headless)"
  echo "kafka.sh: fetching Apache Kafka $version jars from Maven Central into $libs" >&2
  rm -rf "$libs"
  mkdir -p "$libs"
  mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$libs" >&2 \
    || die "mvn could not fetch the Kafka jars"
  touch "$libs/.complete"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start() {
  local port="" dir=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      --dir) dir="$2"; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  [ -n "$dir" ] || die "start needs --dir DIR"
  fetch
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if [ -f "$dir/kafka.pid" ] && kill -0 "$(cat "$dir/kafka.pid")" 2>/dev/null; then
    die "a broker already runs from $dir (pid $(cat "$dir/kafka.pid"))"
  fi
  if [ -f "$dir/server.properties" ]; then
    port="$(sed -n 's/^advertised.listeners=PLAINTEXT:\/\/127.0.0.1:\([0-9]*\)$/\1/p' "$dir/server.properties")"
  else
    [ -n "$port" ] || port="$(free_port)"
    local controller_port
    controller_port="$(free_port)"
    cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.quorum.voters=1@127.0.0.1:$controller_port
log.dirs=$dir/data
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
group.initial.rebalance.delay.ms=0
num.partitions=1
auto.create.topics.enable=true
PROPS
    cat > "$dir/log4j2.xml" <<XML
<Configuration status="WARN">
  <Appenders><File name="file" fileName="$dir/broker.log"><PatternLayout pattern="%d %p %c{1} %m%n"/></File></Appenders>
  <Loggers><Root level="info"><AppenderRef ref="file"/></Root></Loggers>
</Configuration>
XML
    local cluster_id
    cluster_id="$(python3 -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')"
    java -cp "$libs/*" -Dlog4j2.configurationFile="$dir/log4j2.xml" kafka.tools.StorageTool \
      format -t "$cluster_id" -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
      || { cat "$dir/format.log" >&2; die "formatting the storage in $dir failed"; }
  fi
  nohup java -Xms256m -Xmx768m -XX:+UseG1GC -cp "$libs/*" -Dlog4j2.configurationFile="$dir/log4j2.xml" \
    kafka.Kafka "$dir/server.properties" >"$dir/stdout.log" 2>&1 </dev/null &
  echo $! > "$dir/kafka.pid"
  local deadline=$((SECONDS + 90))
  until python3 - "$port" <<'PY' 2>/dev/null
import socket, struct, sys
# An ApiVersions request (key 18, v0): the broker answers only once it serves requests.
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
body = struct.pack(">hhih", 18, 0, 1, 4) + b"test"
s.sendall(struct.pack(">i", len(body)) + body)
size = struct.unpack(">i", s.recv(4))[0]
data = b""
while len(data) < size:
    data += s.recv(size - len(data))
sys.exit(0 if struct.unpack(">h", data[4:6])[0] == 0 else 1)
PY
  do
    if ! kill -0 "$(cat "$dir/kafka.pid")" 2>/dev/null; then
      tail -n 30 "$dir/stdout.log" "$dir/broker.log" >&2 || true
      die "the broker exited during start"
    fi
    [ $SECONDS -lt $deadline ] || { tail -n 30 "$dir/broker.log" >&2 || true; die "the broker did not answer on 127.0.0.1:$port within 90 s"; }
    sleep 0.3
  done
  echo "127.0.0.1:$port"
}

stop() {
  local dir=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir) dir="$2"; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  [ -n "$dir" ] || die "stop needs --dir DIR"
  [ -f "$dir/kafka.pid" ] || return 0
  local pid
  pid="$(cat "$dir/kafka.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$dir/kafka.pid"
}

case "${1:-}" in
  fetch) fetch ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: $0 fetch | start [--port N] --dir DIR | stop --dir DIR" >&2; exit 2 ;;
esac
