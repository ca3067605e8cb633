#!/usr/bin/env bash
# Fuzz smoke run for CI: every target from the committed seeds (fuzz/seeds/<target>, copied
# into the git-ignored corpus/), the ClientHello parser for 60 s and the others for 25 s each
# (FUZZ_HELLO_SECS and FUZZ_OTHER_SECS change that), failing on any crash. Needs no nightly: RUSTC_BOOTSTRAP=1 lets
# cargo-fuzz use the stable toolchain's unstable flags; cargo-fuzz is installed if missing.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=(client_hello parse_message framing server_hello ja4 quic_initial ocsp_response session_ticket proxy_header)
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  cp -n "seeds/$t"/* "corpus/$t"/ 2>/dev/null || true
done
cargo fuzz build
for t in "${targets[@]}"; do
  secs=${FUZZ_OTHER_SECS:-25}
  [ "$t" = client_hello ] && secs=${FUZZ_HELLO_SECS:-60}
  echo "fuzz: $t for ${secs}s"
  log="$(mktemp)"
  if ! cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz: $t FAILED (reproducer under fuzz/artifacts/$t)"
    exit 1
  fi
  grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)" "$log" || true
  rm -f "$log"
done
echo "fuzz: no crash"
