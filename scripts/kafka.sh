#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft: one process is broker and
# controller) for tests, fetched from Maven Central and cached.
#
#   scripts/kafka.sh fetch       download the broker jars into the cache (once)
#   scripts/kafka.sh start DIR   start a broker whose files live in DIR; prints
#                                the bootstrap address (127.0.0.1:PORT) on stdout
#   scripts/kafka.sh stop DIR    stop the broker started in DIR
#
# `start` on a DIR that already holds server.properties (a broker that was
# stopped) restarts it on the same ports with the same data: nothing is
# formatted again.
#
# Environment:
#   STREAMRNN_KAFKA_CACHE       jar cache (default ~/.cache/streamrnn/kafka-4.1.1)
#   STREAMRNN_KAFKA_HEAP        JVM heap options (default "-Xmx512m -Xms128m")
#   STREAMRNN_KAFKA_JAVA_OPTS   extra JVM options
#   STREAMRNN_KAFKA_START_TIMEOUT  seconds to wait for the port (default 60)
#   STREAMRNN_KAFKA_STOP_TIMEOUT   seconds between TERM and KILL (default 30)
set -euo pipefail

KAFKA_VERSION=4.1.1
SLF4J_VERSION=2.0.17
CACHE="${STREAMRNN_KAFKA_CACHE:-$HOME/.cache/streamrnn/kafka-${KAFKA_VERSION}}"
LIBS="$CACHE/libs"
MARKER="$CACHE/.fetched-kafka_2.13-${KAFKA_VERSION}"
HEAP="${STREAMRNN_KAFKA_HEAP:--Xmx512m -Xms128m}"
START_TIMEOUT="${STREAMRNN_KAFKA_START_TIMEOUT:-60}"
STOP_TIMEOUT="${STREAMRNN_KAFKA_STOP_TIMEOUT:-30}"

die() { echo "kafka.sh: error: $*" >&2; exit 1; }
log() { echo "kafka.sh: $*" >&2; }

usage() {
    cat >&2 <<EOF
usage: $0 fetch
       $0 start DIR
       $0 stop DIR
EOF
    exit 2
}

need() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH: $2"
}

# ---------------------------------------------------------------------------
# fetch
# ---------------------------------------------------------------------------
fetched() {
    [[ -f "$MARKER" ]] && compgen -G "$LIBS/kafka_2.13-${KAFKA_VERSION}.jar" >/dev/null
}

cmd_fetch() {
    if fetched; then
        return 0
    fi
    need mvn "Maven is needed once to download the Kafka broker jars (apt-get install maven)"
    mkdir -p "$CACHE"
    # Serialise concurrent fetches (e.g. parallel test sessions).
    exec 9>"$CACHE/.lock"
    flock 9
    if fetched; then
        exec 9>&-
        return 0
    fi
    local tmp
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/streamrnn-kafka-fetch.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    cat >"$tmp/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 http://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>streamrnn</groupId>
  <artifactId>kafka-broker-fetch</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>${KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-api</artifactId>
      <version>${SLF4J_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-simple</artifactId>
      <version>${SLF4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
EOF
    log "downloading Kafka ${KAFKA_VERSION} jars from Maven Central into $LIBS ..."
    rm -rf "$LIBS" "$MARKER"
    if ! (cd "$tmp" && mvn -q -B -Dstyle.color=never -f "$tmp/pom.xml" \
            org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$LIBS" >&2); then
        rm -rf "$LIBS"
        die "Maven could not download the Kafka broker jars (is Maven Central reachable?)"
    fi
    compgen -G "$LIBS/kafka_2.13-${KAFKA_VERSION}.jar" >/dev/null \
        || die "download finished but $LIBS/kafka_2.13-${KAFKA_VERSION}.jar is missing"
    touch "$MARKER"
    log "fetched $(find "$LIBS" -name '*.jar' | wc -l) jars"
    rm -rf "$tmp"
    trap - EXIT
    exec 9>&-
}

# ---------------------------------------------------------------------------
# helpers for start/stop
# ---------------------------------------------------------------------------
abs_dir() {
    mkdir -p "$1"
    (cd "$1" && pwd -P)
}

# Prints two distinct free TCP ports on 127.0.0.1.
free_ports() {
    if command -v python3 >/dev/null 2>&1; then
        python3 - <<'EOF'
import socket
socks = []
for _ in range(2):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
    else
        # Fallback: random ports in the ephemeral range that nobody answers on.
        local p ports=()
        while ((${#ports[@]} < 2)); do
            p=$((20000 + RANDOM % 30000))
            if ! port_open "$p" && [[ " ${ports[*]-} " != *" $p "* ]]; then
                ports+=("$p")
            fi
        done
        echo "${ports[@]}"
    fi
}

port_open() {
    # Bounded: a listener that is bound but not accepting yet (a restarted broker waits for its old
    # session to expire before it accepts) can leave a connect hanging on SYN retries.
    timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null
}

prop() {  # prop FILE KEY -> value
    sed -n "s/^$2=//p" "$1" | tail -n 1
}

# True if PID is a live (non-zombie) Kafka broker started for DIR.
broker_alive() {
    local pid="$1" dir="$2" state
    [[ -n "$pid" && -d "/proc/$pid" ]] || return 1
    state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
    [[ -n "$state" && "$state" != Z && "$state" != X ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$dir/server.properties"
}

tail_log() {
    local logf="$1"
    if [[ -f "$logf" ]]; then
        echo "---- last lines of $logf ----" >&2
        tail -n 40 "$logf" >&2 || true
        echo "----" >&2
    fi
}

write_properties() {
    local dir="$1" port="$2" cport="$3"
    cat >"$dir/server.properties.tmp" <<EOF
# Single-node KRaft broker for streamrnn tests (written by scripts/kafka.sh).
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:${cport}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${cport}
advertised.listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${cport}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=${dir}/data
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
# abort a transaction past its timeout within a second (the default checks every 10 s): the
# exactly-once tests' timed-out transaction is then aborted well inside the test's pause
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.ms=-1
log.retention.bytes=-1
EOF
    mv "$dir/server.properties.tmp" "$dir/server.properties"
}

# ---------------------------------------------------------------------------
# start
# ---------------------------------------------------------------------------
cmd_start() {
    [[ $# -eq 1 ]] || usage
    need java "a Java 17+ runtime is needed to run the Kafka broker (apt-get install openjdk-17-jre-headless)"
    cmd_fetch

    local dir props logf pidf port cport pid
    dir="$(abs_dir "$1")"
    props="$dir/server.properties"
    logf="$dir/broker.log"
    pidf="$dir/broker.pid"

    if [[ -f "$pidf" ]] && broker_alive "$(cat "$pidf")" "$dir"; then
        die "a broker is already running from $dir (pid $(cat "$pidf"))"
    fi

    if [[ -f "$props" ]]; then
        # Restart: same ports, same data.
        port="$(prop "$props" listeners | sed -n 's/.*PLAINTEXT:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p')"
        cport="$(prop "$props" controller.quorum.bootstrap.servers | sed 's/.*://')"
        [[ -n "$port" && -n "$cport" ]] || die "cannot read the ports from $props"
        if port_open "$port" || port_open "$cport"; then
            die "port $port or $cport (from $props) is in use by another process"
        fi
        log "restarting broker in $dir on 127.0.0.1:$port"
    else
        read -r port cport < <(free_ports)
        [[ -n "$port" && -n "$cport" ]] || die "could not pick free ports"
        write_properties "$dir" "$port" "$cport"
    fi

    mkdir -p "$dir/data"
    if [[ ! -f "$dir/data/meta.properties" ]]; then
        local cluster_id
        if [[ -f "$dir/cluster.id" ]]; then
            cluster_id="$(cat "$dir/cluster.id")"
        else
            cluster_id="$(java -cp "$LIBS/*" kafka.tools.StorageTool random-uuid 2>>"$logf.format")" \
                || { tail_log "$logf.format"; die "StorageTool random-uuid failed"; }
            cluster_id="$(echo "$cluster_id" | tail -n 1 | tr -d '[:space:]')"
            echo "$cluster_id" >"$dir/cluster.id"
        fi
        if ! java -cp "$LIBS/*" kafka.tools.StorageTool format --standalone \
                -t "$cluster_id" -c "$props" >>"$logf.format" 2>&1; then
            tail_log "$logf.format"
            die "formatting the Kafka storage in $dir/data failed"
        fi
    fi

    # The broker stays in the caller's process group, so an interrupted test
    # session takes it down too instead of leaving an orphan behind.
    # shellcheck disable=SC2086
    java $HEAP -XX:+UseSerialGC \
        -Djava.awt.headless=true -Dorg.slf4j.simpleLogger.showDateTime=true \
        ${STREAMRNN_KAFKA_JAVA_OPTS:-} \
        -cp "$LIBS/*" kafka.Kafka "$props" </dev/null >>"$logf" 2>&1 &
    pid=$!
    echo "$pid" >"$pidf"
    echo "127.0.0.1:$port" >"$dir/bootstrap"

    local deadline=$((SECONDS + START_TIMEOUT))
    until port_open "$port"; do
        if ! broker_alive "$pid" "$dir"; then
            wait "$pid" 2>/dev/null || true
            tail_log "$logf"
            rm -f "$pidf"
            die "the Kafka broker exited during startup (log: $logf)"
        fi
        if ((SECONDS >= deadline)); then
            tail_log "$logf"
            kill -KILL "$pid" 2>/dev/null || true
            rm -f "$pidf"
            die "the Kafka broker did not open 127.0.0.1:$port within ${START_TIMEOUT}s (log: $logf)"
        fi
        sleep 0.2
    done
    echo "127.0.0.1:$port"
}

# ---------------------------------------------------------------------------
# stop
# ---------------------------------------------------------------------------
cmd_stop() {
    [[ $# -eq 1 ]] || usage
    [[ -d "$1" ]] || die "no such directory: $1"
    local dir pidf pid
    dir="$(abs_dir "$1")"
    pidf="$dir/broker.pid"
    if [[ ! -f "$pidf" ]]; then
        log "no broker.pid in $dir: nothing to stop"
        return 0
    fi
    pid="$(cat "$pidf")"
    if ! broker_alive "$pid" "$dir"; then
        log "broker (pid $pid) is not running"
        rm -f "$pidf"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while broker_alive "$pid" "$dir"; do
        if ((SECONDS >= deadline)); then
            log "broker (pid $pid) did not stop within ${STOP_TIMEOUT}s after TERM: sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 10))
            while broker_alive "$pid" "$dir"; do
                ((SECONDS < deadline)) || die "broker (pid $pid) survived KILL"
                sleep 0.1
            done
            break
        fi
        sleep 0.1
    done
    rm -f "$pidf"
}

main() {
    [[ $# -ge 1 ]] || usage
    local cmd="$1"
    shift
    case "$cmd" in
        fetch) [[ $# -eq 0 ]] || usage; cmd_fetch ;;
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        -h | --help | help) usage ;;
        *) usage ;;
    esac
}

main "$@"
