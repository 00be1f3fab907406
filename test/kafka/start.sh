#!/usr/bin/env bash
# Starts the test broker (Apache Kafka, KRaft, one combined node) from Maven Central jars and waits until it serves.
# Usage: test/kafka/start.sh RUN_DIR [PORT CPORT]   prints the bootstrap address "127.0.0.1:PORT" on stdout.
# A second call with the same RUN_DIR restarts it on the same data and ports (after kill -9 too).
# Stop: kill -TERM "$(cat RUN_DIR/broker.pid)". KAFKA_PROFILE=kafka3 selects 3.9.2 (its own lib dir).
set -eu
K=$(cd "$(dirname "$0")" && pwd); RUN=$1; PORT=${2:-19092}; CPORT=${3:-19093}
PROFILE=${KAFKA_PROFILE:-kafka4}
LIB="$K/lib"; [ "$PROFILE" = kafka4 ] || LIB="$K/lib-$PROFILE"
if [ ! -f "$LIB/.complete" ]; then
  # Maven writes ANSI codes to stdout even with -q: keep it off our stdout, which callers parse.
  ( flock 9; [ -f "$LIB/.complete" ] || { mvn -B -q -f "$K/pom.xml" -P"$PROFILE" -Dlib.dir="$LIB" \
      dependency:copy-dependencies >&2 && touch "$LIB/.complete"; } ) 9>"/tmp/spoolhouse-kafka-mvn.lock"
fi
if [ "$PROFILE" = kafka3 ]; then LOGCFG=-Dlog4j.configuration=file:$K/log4j.properties; else LOGCFG=-Dlog4j2.configurationFile=$K/log4j2.properties; fi
mkdir -p "$RUN"
if [ ! -f "$RUN/server.properties" ]; then
  sed -e "s#@PORT@#$PORT#g" -e "s#@CPORT@#$CPORT#g" -e "s#@DATA_DIR@#$RUN/data#" "$K/server.properties" > "$RUN/server.properties.tmp"
  ID=$(node -e "process.stdout.write(require('crypto').randomBytes(16).toString('base64url'))")
  java "$LOGCFG" -cp "$LIB/*" kafka.tools.StorageTool format --cluster-id="$ID" -c "$RUN/server.properties.tmp" > "$RUN/format.out" 2>&1
  mv "$RUN/server.properties.tmp" "$RUN/server.properties"
fi
PORT=$(sed -n 's#^advertised.listeners=PLAINTEXT://127.0.0.1:##p' "$RUN/server.properties")  # a restart keeps its ports
: > "$RUN/broker.out"
java -Xms256m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true "$LOGCFG" \
     -cp "$LIB/*" kafka.Kafka "$RUN/server.properties" >> "$RUN/broker.out" 2>&1 &
echo $! > "$RUN/broker.pid"
for i in $(seq 1 480); do
  if grep -q "Kafka Server started" "$RUN/broker.out"; then echo "127.0.0.1:$PORT"; exit 0; fi
  kill -0 "$(cat "$RUN/broker.pid")" 2>/dev/null || { tail -20 "$RUN/broker.out" >&2; exit 1; }
  sleep 0.25
done
tail -20 "$RUN/broker.out" >&2; exit 1
