# Sourced by scripts/test and scripts/bench-kafka: finds (or installs) tansu,
# an Apache-Kafka-compatible broker, and starts it on a free loopback port
# with in-memory storage. Sets TANSU_BROKERS; stops the broker on exit.

TERMWATCH_TOOLS="${TERMWATCH_TOOLS:-/var/tmp/termwatch-tools}"
TANSU_VERSION=0.6.0

find_tansu() {
  for t in "$(command -v tansu || true)" "$TERMWATCH_TOOLS/bin/tansu" "$HOME/.cargo/bin/tansu"; do
    if [ -n "$t" ] && [ -x "$t" ]; then echo "$t"; return; fi
  done
}

start_tansu() {
  local tansu port log
  tansu="$(find_tansu)"
  if [ -z "$tansu" ]; then
    echo "tansu is not installed: building it once into $TERMWATCH_TOOLS (about 10 minutes on 2 cores)"
    # Its own target directory: tansu's dependency set shares nothing useful with ours.
    # Without termwatch's clippy wrapper (scripts/lib/build.sh): tansu's code is not ours to lint.
    env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS CARGO_TARGET_DIR="$TERMWATCH_TOOLS/target" \
      cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore --root "$TERMWATCH_TOOLS"
    tansu="$TERMWATCH_TOOLS/bin/tansu"
  fi
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  log="$(mktemp -t tansu.XXXXXX.log)"
  "$tansu" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$log" 2>&1 &
  TANSU_PID=$!
  trap 'kill "$TANSU_PID" 2>/dev/null || true; wait "$TANSU_PID" 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      TANSU_BROKERS="127.0.0.1:$port"
      echo "tansu listening on $TANSU_BROKERS (log: $log)"
      return
    fi
    if ! kill -0 "$TANSU_PID" 2>/dev/null; then
      echo "tansu exited before listening:"; cat "$log"; exit 1
    fi
    sleep 0.1
  done
  echo "tansu did not listen on 127.0.0.1:$port within 10 s:"; cat "$log"; exit 1
}
