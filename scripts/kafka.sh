#!/usr/bin/env bash
# Apache Kafka 4.x (KRaft: one combined broker+controller node) on loopback, run from the jars
# that Maven resolves from Maven Central (scripts/kafka-pom.xml); nothing else is downloaded.
#
#   scripts/kafka.sh fetch                        resolve the jars once into the cache (idempotent)
#   scripts/kafka.sh start [--port N] --dir DIR   format DIR if new, start the broker in the
#                                                 background, wait until it serves metadata, and
#                                                 print its bootstrap address (127.0.0.1:N) as the
#                                                 last line of stdout
#   scripts/kafka.sh stop --dir DIR               stop the broker started from DIR (TERM, then KILL
#                                                 after 20 s)
#
# start's options for a secured listener beside the PLAINTEXT one:
#   --sasl-ssl KEYSTORE           a SASL_SSL listener (SCRAM-SHA-512 over TLS) on another free loopback
#                                 port; KEYSTORE is one PEM file holding the broker's private key
#                                 (unencrypted PKCS#8) and then its certificate chain. Its address is
#                                 printed as "SASL_SSL 127.0.0.1:M" on the line before the last.
#   --scram-user NAME:PASSWORD    a SCRAM-SHA-512 user, added when DIR is formatted (its first start);
#                                 repeatable; NAME and PASSWORD of letters, digits, '.', '_' and '-'
#
# Topics, messages and committed offsets live in DIR/data, so stop then start on the same DIR
# keeps them; without --port a restart reuses the previous ports when they are still free.
# The broker's log is DIR/logs/server.log (log4j2), its JVM stdout/stderr DIR/logs/kafka.out.
#
# Environment:
#   KAFKA_VERSION      Kafka version to fetch (default: kafka.version in scripts/kafka-pom.xml)
#   KAFKA_HOME_CACHE   where the jars go (default ~/.cache/llm-router/kafka-<version>; the jars
#                      are in its libs/); KAFKA_JARS_CACHE is read too, for older callers
#   KAFKA_HEAP_OPTS    JVM heap options (default -Xms256m -Xmx512m)
#   KAFKA_START_TIMEOUT  seconds start waits for the broker (default 90)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pom="$here/kafka-pom.xml"

die() { echo "kafka.sh: $*" >&2; exit 1; }
say() { echo "kafka.sh: $*" >&2; }

[ -f "$pom" ] || die "missing $pom"
version="${KAFKA_VERSION:-$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")}"
[ -n "$version" ] || die "no kafka.version in $pom (or set KAFKA_VERSION)"
cache="${KAFKA_HOME_CACHE:-${KAFKA_JARS_CACHE:-$HOME/.cache/llm-router/kafka-$version}}"
libs="$cache/libs"

need_python() {
  command -v python3 >/dev/null || die "python3 is needed (free ports, cluster id, readiness probe)"
}

java_bin() {
  local j
  if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then j="$JAVA_HOME/bin/java"
  else j="$(command -v java || true)"; fi
  [ -n "$j" ] || die "java 17 or later is needed to run Kafka $version (apt-get install openjdk-17-jre-headless)"
  local major
  major="$("$j" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = \([0-9]*\).*/\1/p')"
  [ -n "$major" ] && [ "$major" -ge 17 ] || die "Kafka $version needs java 17 or later; $j is ${major:-of unknown version}"
  echo "$j"
}

# ---------------------------------------------------------------------------------------- fetch
fetch() {
  [ -f "$libs/.complete" ] && return 0
  command -v mvn >/dev/null || die "mvn is needed to fetch the Kafka jars from Maven Central (apt-get install maven)"
  mkdir -p "$cache"
  # One fetch at a time per cache (parallel CI jobs); the jars land in a temporary folder that is
  # renamed into place only when Maven succeeded, so an interrupted fetch leaves nothing half done.
  exec 9>"$cache/.lock"
  command -v flock >/dev/null && flock 9
  if [ -f "$libs/.complete" ]; then exec 9>&-; return 0; fi
  say "fetching Apache Kafka $version and its dependencies from Maven Central into $libs"
  local tmp="$cache/libs.tmp.$$" log="$cache/fetch.log" t0=$SECONDS
  rm -rf "$tmp" "$libs"
  if ! mvn -q -B -f "$pom" -Dkafka.version="$version" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    rm -rf "$tmp"
    die "mvn could not fetch org.apache.kafka:kafka_2.13:$version (full output: $log)"
  fi
  ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || { rm -rf "$tmp"; die "mvn ran but kafka_2.13 is not among the jars in $tmp"; }
  echo "$version" > "$tmp/.complete"
  mv "$tmp" "$libs"
  exec 9>&-
  say "fetched $(ls "$libs"/*.jar | wc -l) jars ($(du -sh "$libs" | cut -f1)) in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------------------- helpers
# Prints N distinct free loopback TCP ports.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

port_free() {
  python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}

# Exit 0 when the broker on 127.0.0.1:$1 answers a Metadata request that lists a broker on that
# port (in KRaft a broker lists itself only once the controller unfenced it); exit 1 otherwise.
probe() {
  python3 - "$1" <<'PY'
import socket, struct, sys

port = int(sys.argv[1])

def call(sock, api_key, version, body, corr):
    client = b"kafka.sh"
    header = struct.pack(">hhih", api_key, version, corr, len(client)) + client
    msg = header + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    def read(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("connection closed")
            buf += chunk
        return buf
    size = struct.unpack(">i", read(4))[0]
    data = read(size)
    if struct.unpack(">i", data[:4])[0] != corr:
        raise ValueError("correlation id mismatch")
    return data[4:]

try:
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    # ApiVersions v0: which Metadata versions the broker takes.
    r = call(s, 18, 0, b"", 1)
    err, n = struct.unpack(">hi", r[:6])
    if err != 0:
        sys.exit(1)
    ranges = {}
    for i in range(n):
        key, lo, hi = struct.unpack(">hhh", r[6 + 6 * i: 12 + 6 * i])
        ranges[key] = (lo, hi)
    lo, hi = ranges[3]
    v = max(lo, 4)
    if v > min(hi, 8):           # v4..v8 are the non-flexible versions parsed below
        sys.exit(1)
    body = struct.pack(">i", 0) + b"\x00"   # no topics, allow_auto_topic_creation=false
    if v >= 8:
        body += b"\x00\x00"                 # no authorized operations
    r = call(s, 3, v, body, 2)
    off = 4                                 # throttle_time_ms
    (count,) = struct.unpack(">i", r[off:off + 4]); off += 4
    ports = []
    for _ in range(count):
        off += 4                            # node_id
        (hl,) = struct.unpack(">h", r[off:off + 2]); off += 2 + hl
        (bport,) = struct.unpack(">i", r[off:off + 4]); off += 4
        (rl,) = struct.unpack(">h", r[off:off + 2]); off += 2 + max(rl, 0)
        ports.append(bport)
    sys.exit(0 if port in ports else 1)
except Exception:
    sys.exit(1)
PY
}

# The pid in DIR/kafka.pid when that process is alive and is a Kafka broker; empty otherwise.
running_pid() {
  local pidfile="$1/kafka.pid" pid
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka' || return 0
  echo "$pid"
}

show_logs() {
  local dir="$1"
  for f in "$dir/logs/kafka.out" "$dir/logs/server.log"; do
    [ -s "$f" ] || continue
    echo "----- last lines of $f -----" >&2
    tail -n 40 "$f" >&2
  done
}

# Sends TERM, waits up to 20 s, then KILL and waits until the process is gone.
terminate() {
  local pid="$1" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  say "pid $pid still runs 20 s after TERM: sending KILL"
  kill -KILL "$pid" 2>/dev/null || return 0
  for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  die "pid $pid survived KILL"
}

prop() { sed -n "s/^$1=//p" "$2" | tail -n 1; }

# The port of listener $1 (PLAINTEXT, SASL_SSL) in the `listeners` of DIR/server.properties; empty if none.
listener_port() {
  prop listeners "$2/server.properties" | tr ',' '\n' | sed -n "s|^$1://127\.0\.0\.1:\([0-9]*\)$|\1|p"
}

write_config() {
  local dir="$1" port="$2" cport="$3" sport="$4" keystore="$5"
  local listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
  local advertised="PLAINTEXT://127.0.0.1:$port" map="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [ -n "$sport" ]; then
    listeners="$listeners,SASL_SSL://127.0.0.1:$sport"
    advertised="$advertised,SASL_SSL://127.0.0.1:$sport"
    map="$map,SASL_SSL:SASL_SSL"
  fi
  cat >"$dir/server.properties" <<PROPS
# Written by scripts/kafka.sh: one KRaft node that is both broker and controller, on loopback.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$map
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=true
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
  if [ -n "$sport" ]; then
    # Clients authenticate with SCRAM-SHA-512 (users stored in the cluster's metadata) over TLS; the
    # broker's key and certificate chain come from one PEM file (Kafka reads PEM keystores itself).
    cat >>"$dir/server.properties" <<PROPS
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$keystore
PROPS
  fi
  cat >"$dir/log4j2.properties" <<LOG
# Written by scripts/kafka.sh: the broker logs to a file, not to the terminal.
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = $dir/logs/server.log
appender.file.filePattern = $dir/logs/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = warn
LOG
}

# ---------------------------------------------------------------------------------------- start
start() {
  local port="" dir="" keystore="" scram=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) [ $# -ge 2 ] || die "--port needs a value"; port="$2"; shift 2 ;;
      --port=*) port="${1#--port=}"; shift ;;
      --dir) [ $# -ge 2 ] || die "--dir needs a value"; dir="$2"; shift 2 ;;
      --dir=*) dir="${1#--dir=}"; shift ;;
      --sasl-ssl) [ $# -ge 2 ] || die "--sasl-ssl needs a value"; keystore="$2"; shift 2 ;;
      --sasl-ssl=*) keystore="${1#--sasl-ssl=}"; shift ;;
      --scram-user) [ $# -ge 2 ] || die "--scram-user needs a value"; scram+=("$2"); shift 2 ;;
      --scram-user=*) scram+=("${1#--scram-user=}"); shift ;;
      *) die "start: unknown argument '$1' (usage: start [--port N] --dir DIR [--sasl-ssl KEYSTORE] [--scram-user NAME:PASSWORD]...)" ;;
    esac
  done
  [ -n "$dir" ] || die "start needs --dir DIR"
  [ -z "$port" ] || [[ "$port" =~ ^[0-9]+$ && "$port" -ge 1 && "$port" -le 65535 ]] || die "--port must be a TCP port number, not '$port'"
  if [ -n "$keystore" ]; then
    [ -r "$keystore" ] || die "--sasl-ssl: cannot read the keystore $keystore"
    keystore="$(cd "$(dirname "$keystore")" && pwd)/$(basename "$keystore")"
  fi
  local user
  for user in "${scram[@]}"; do
    [[ "$user" =~ ^[A-Za-z0-9._-]+:[A-Za-z0-9._-]+$ ]] || die "--scram-user takes NAME:PASSWORD of letters, digits, '.', '_' and '-', not '$user'"
  done
  [ ${#scram[@]} -eq 0 ] || [ -n "$keystore" ] || die "--scram-user needs --sasl-ssl (the listener that authenticates)"
  need_python
  local java
  java="$(java_bin)"
  fetch
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  mkdir -p "$dir/logs"

  local pid
  pid="$(running_pid "$dir")"
  [ -z "$pid" ] || die "a broker already runs from $dir (pid $pid, 127.0.0.1:$(listener_port PLAINTEXT "$dir")); stop it first"
  rm -f "$dir/kafka.pid"

  # Ports: --port wins; else the previous port of this DIR if still free; else a free one.
  # The controller and SASL_SSL ports are kept across restarts when free (the controller's
  # names the quorum's one voter).
  local old_port="" cport="" sport=""
  if [ -f "$dir/server.properties" ]; then
    old_port="$(listener_port PLAINTEXT "$dir")"
    cport="$(listener_port CONTROLLER "$dir")"
    sport="$(listener_port SASL_SSL "$dir")"
  fi
  if [ -z "$port" ]; then
    if [ -n "$old_port" ] && port_free "$old_port"; then port="$old_port"; else port="$(free_ports 1)"; fi
  else
    port_free "$port" || die "port $port on 127.0.0.1 is already in use"
  fi
  local p
  if [ -z "$cport" ] || [ "$cport" = "$port" ] || ! port_free "$cport"; then
    for p in $(free_ports 2); do [ "$p" != "$port" ] && { cport="$p"; break; }; done
  fi
  if [ -z "$keystore" ]; then
    sport=""
  elif [ -z "$sport" ] || [ "$sport" = "$port" ] || [ "$sport" = "$cport" ] || ! port_free "$sport"; then
    for p in $(free_ports 3); do [ "$p" != "$port" ] && [ "$p" != "$cport" ] && { sport="$p"; break; }; done
  fi
  write_config "$dir" "$port" "$cport" "$sport" "$keystore"

  local log4j="-Dlog4j2.configurationFile=$dir/log4j2.properties"
  if [ ! -f "$dir/data/meta.properties" ]; then
    local cluster_id
    # A random id; one that starts with "-" would read as an option to kafka-storage: draw again.
    cluster_id="$(python3 -c 'import base64, uuid
while (i := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"): pass
print(i)')"
    local users=() name
    for user in "${scram[@]}"; do
      name="${user%%:*}"
      users+=(--add-scram "SCRAM-SHA-512=[name=$name,password=${user#*:}]")
    done
    "$java" -Xmx256m "$log4j" -cp "$libs/*" kafka.tools.StorageTool \
      format --cluster-id "$cluster_id" --config "$dir/server.properties" "${users[@]}" >"$dir/logs/format.out" 2>&1 \
      || { cat "$dir/logs/format.out" >&2; die "formatting the storage in $dir/data failed"; }
  elif [ ${#scram[@]} -gt 0 ]; then
    say "$dir is formatted already: its SCRAM users stay as they are (--scram-user counts at the first start only)"
  fi

  echo "===== kafka.sh start $(date -u +%FT%TZ): Kafka $version on 127.0.0.1:$port, controller 127.0.0.1:$cport" >>"$dir/logs/kafka.out"
  # shellcheck disable=SC2086
  nohup "$java" ${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true "$log4j" -Dkafka.logs.dir="$dir/logs" \
    -cp "$libs/*" kafka.Kafka "$dir/server.properties" >>"$dir/logs/kafka.out" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$dir/kafka.pid"

  local timeout="${KAFKA_START_TIMEOUT:-90}" t0=$SECONDS
  until probe "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      show_logs "$dir"
      rm -f "$dir/kafka.pid"
      die "the broker (pid $pid) exited during start; logs in $dir/logs"
    fi
    if [ $((SECONDS - t0)) -ge "$timeout" ]; then
      show_logs "$dir"
      terminate "$pid" || true
      rm -f "$dir/kafka.pid"
      die "the broker did not serve metadata on 127.0.0.1:$port within $timeout s (stopped it); logs in $dir/logs"
    fi
    sleep 0.25
  done
  say "Apache Kafka $version ready on 127.0.0.1:$port${sport:+ (SASL_SSL on 127.0.0.1:$sport)} in $((SECONDS - t0)) s (pid $pid, data $dir/data, log $dir/logs/server.log)"
  [ -z "$sport" ] || echo "SASL_SSL 127.0.0.1:$sport"
  echo "127.0.0.1:$port"
}

# ---------------------------------------------------------------------------------------- stop
stop() {
  local dir=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir) [ $# -ge 2 ] || die "--dir needs a value"; dir="$2"; shift 2 ;;
      --dir=*) dir="${1#--dir=}"; shift ;;
      *) die "stop: unknown argument '$1' (usage: stop --dir DIR)" ;;
    esac
  done
  [ -n "$dir" ] || die "stop needs --dir DIR"
  [ -d "$dir" ] || { say "no $dir: nothing to stop"; return 0; }
  local pid
  pid="$(running_pid "$dir")"
  if [ -z "$pid" ]; then
    [ -f "$dir/kafka.pid" ] && say "no broker runs from $dir (stale pid file removed)"
    rm -f "$dir/kafka.pid"
    return 0
  fi
  terminate "$pid"
  rm -f "$dir/kafka.pid"
  say "stopped the broker from $dir (pid $pid)"
}

case "${1:-}" in
  fetch) shift; [ $# -eq 0 ] || die "fetch takes no arguments"; fetch ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  -h|--help|help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) echo "usage: $0 fetch | start [--port N] --dir DIR [--sasl-ssl KEYSTORE] [--scram-user NAME:PASSWORD]... | stop --dir DIR" >&2; exit 2 ;;
esac
