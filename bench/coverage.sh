#!/usr/bin/env bash
# Line coverage of the engine and the plugin with cargo-llvm-cov, over the same
# tests `cargo xtask test` runs: the bundles the host tests load are built
# instrumented too, so process() and the workers count when a host drives them.
#
#   rustup component add llvm-tools-preview && cargo install cargo-llvm-cov
#   bench/coverage.sh            # summary per file; HTML in target/llvm-cov/html
#
# It builds everything again, instrumented, (our crates only,
# through cargo-llvm-cov's rustc wrapper; about 10 minutes on 2 cores). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-llvm-cov >/dev/null || {
    echo "cargo-llvm-cov is missing: cargo install cargo-llvm-cov" >&2
    exit 1
}
# shellcheck disable=SC1090
source <(cargo llvm-cov show-env --export-prefix)
cargo llvm-cov clean --workspace
# Every test binary runs, whatever one of them does.
cargo xtask test --no-fail-fast || echo "coverage: some tests failed; the report covers what ran" >&2
# The bundled plugin libraries hold the code the host tests ran.
objects=()
while IFS= read -r -d '' so; do
    objects+=(--object "$so")
done < <(find "${CARGO_LLVM_COV_TARGET_DIR:-target}/bundled" -name '*.so' -print0)
ignore='(test-support|tests/host|xtask)/'
cargo llvm-cov report --ignore-filename-regex "$ignore" "${objects[@]}" --summary-only |
    tee target/llvm-cov-summary.txt
cargo llvm-cov report --ignore-filename-regex "$ignore" "${objects[@]}" --html >/dev/null
echo "HTML: target/llvm-cov/html/index.html"
