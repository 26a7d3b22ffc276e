# Sourced by scripts/fuzz and scripts/test: coverage-guided fuzzing with
# cargo-fuzz (libFuzzer), which needs a nightly toolchain (rustup's
# `nightly`). cargo-fuzz is installed once into $TERMWATCH_TOOLS.

# The fuzz target directory is claimed for this checkout there (claim_target_dirs).
source "$(dirname "${BASH_SOURCE[0]}")/build.sh"
TERMWATCH_TOOLS="${TERMWATCH_TOOLS:-/var/tmp/termwatch-tools}"
CARGO_FUZZ_VERSION=0.13.2

# Prints why fuzzing cannot run here, or nothing.
fuzz_unavailable() {
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "no nightly toolchain (rustup toolchain install nightly)"
  fi
}

cargo_fuzz() {
  local bin="$TERMWATCH_TOOLS/bin/cargo-fuzz"
  if [ ! -x "$bin" ]; then
    echo "cargo-fuzz is not installed: building it once into $TERMWATCH_TOOLS" >&2
    env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS CARGO_TARGET_DIR="$TERMWATCH_TOOLS/target" \
      cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$TERMWATCH_TOOLS" >&2
  fi
  # The fuzz workspace is built by nightly rustc with libFuzzer's
  # instrumentation, into a target directory of its own; the clippy wrapper
  # of the main build does not apply.
  env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS \
    CARGO_TARGET_DIR="$TERMWATCH_FUZZ_TARGET" \
    PATH="$TERMWATCH_TOOLS/bin:$PATH" cargo +nightly fuzz "$@"
}

# run_fuzz SECONDS [keep]: every target for SECONDS each, from the corpus in
# fuzz/corpus/<target>. With `keep`, new inputs are added to that corpus (to
# commit the useful ones after `cargo fuzz cmin`); without, they go to a
# temporary directory. A crash fails the run and leaves its input in
# fuzz/artifacts/<target>/.
run_fuzz() {
  local seconds="$1" keep="${2:-}" target scratch
  for t in fuzz/fuzz_targets/*.rs; do
    target="$(basename "$t" .rs)"
    if [ -n "$keep" ]; then
      (cd fuzz && cargo_fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -max_len=4096)
    else
      scratch="$(mktemp -d)"
      (cd fuzz && cargo_fuzz run "$target" "$scratch" "corpus/$target" -- -max_total_time="$seconds" -max_len=4096)
      rm -rf "$scratch"
    fi
  done
}
