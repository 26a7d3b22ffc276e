# Sourced by every script that builds termwatch (from any directory):
# one build profile for everything. The test suite, the deploy check and the
# notebooks all use the release profile, and clippy lints the workspace's own
# crates during that same build (clippy-driver as their compiler, the way
# `cargo clippy` runs it), so the heavy dependencies (polars, arrow, rdkafka)
# are compiled once, not three times (check, debug, release).

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/termwatch-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Cargo names a workspace crate's build after its path inside the
# workspace, not after the checkout it is in, so every clone sharing a
# target directory shares one build of each of our crates; and it rebuilds
# a crate only when its sources are newer than that build. A clone whose
# files are older than another clone's last build would be handed that
# clone's code, silently (seen: a second worktree's binary, built after a
# change to the feature engine, came out without it, and `cargo build` in
# the first then gave the second's binary). So each target directory keeps
# which checkout built in it last, and a checkout that was not it touches
# its own crates' files first: cargo rebuilds our crates (minutes), and the
# heavy dependencies stay built. The fuzz build (scripts/lib/fuzz.sh) has a
# target directory of its own and is claimed with the main one.
TERMWATCH_CHECKOUT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
TERMWATCH_FUZZ_TARGET="${TERMWATCH_FUZZ_TARGET:-/var/tmp/termwatch-fuzz-target}"
claim_target_dirs() {
  local dir stale=""
  for dir in "$@"; do
    if [ "$(cat "$dir/.termwatch-checkout" 2>/dev/null || true)" != "$TERMWATCH_CHECKOUT" ]; then
      stale=1
    fi
  done
  if [ -n "$stale" ]; then
    find "$TERMWATCH_CHECKOUT/crates" "$TERMWATCH_CHECKOUT/fuzz/fuzz_targets" -type f -exec touch {} +
    for dir in "$@"; do
      mkdir -p "$dir"
      echo "$TERMWATCH_CHECKOUT" >"$dir/.termwatch-checkout"
    done
  fi
}
claim_target_dirs "$CARGO_TARGET_DIR" "$TERMWATCH_FUZZ_TARGET"

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
