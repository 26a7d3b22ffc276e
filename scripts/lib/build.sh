# Sourced by scripts/test, scripts/test-deploy and scripts/test-notebooks: one
# build profile for everything. The test suite, the deploy check and the
# notebooks all use the release profile, and clippy lints the workspace's own
# crates during that same build (clippy-driver as their compiler, the way
# `cargo clippy` runs it), so the heavy dependencies (polars, arrow, rdkafka)
# are compiled once, not three times (check, debug, release).

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/termwatch-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Lints as `cargo clippy --workspace --all-targets -- -D warnings` would give
# them, applied to every build of the workspace's crates from here on.
use_clippy() {
  local driver
  driver="$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver || true)"
  if [ -z "$driver" ]; then
    echo "clippy-driver not found: rustup component add clippy"
    exit 1
  fi
  export RUSTC_WORKSPACE_WRAPPER="$driver"
  export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
}

# The release binary, built unless TERMWATCH_BIN names one already (scripts/test
# passes the one its test build made). Prints its path.
termwatch_bin() {
  if [ -n "${TERMWATCH_BIN:-}" ] && [ -x "$TERMWATCH_BIN" ]; then
    echo "$TERMWATCH_BIN"
    return
  fi
  # The target directory may be shared by several checkouts, and
  # target/release/termwatch is whichever checkout linked last: cargo does
  # not copy it again when this checkout's build is fresh. Touching main.rs
  # makes cargo relink (seconds) and copy it.
  touch crates/termwatch/src/main.rs
  cargo build --release --locked -p termwatch >&2
  echo "$CARGO_TARGET_DIR/release/termwatch"
}
