#!/usr/bin/env bash
# tuning/bench/scaling.sh [OUTDIR [sni-loadtest suite options...]]
#
# The scaling run of tuning/README.md ("Scaling across cores") as one prepared, time-bounded
# script, for a lent many-core machine: runs loadtest/suites/scaling.toml (short passthrough and
# full TLS at 1, 2, 4 and 8 workers; sizes the machine cannot hold are skipped) against
# target/release/sni-dispatch and whichever of HAProxy and nginx (+ stream module) are installed,
# and writes OUTDIR/scaling.txt (the tables) and OUTDIR/scaling.json (every figure).
# Needs release builds: cargo build --release -p sni-dispatch -p sni-loadtest.
# Bounded: the suite itself stops every run at its duration and count; the whole run is killed
# after LIMIT seconds (default 540). Loopback only. A quick look: scaling.sh /tmp/s --runs 1 --duration-scale 0.3
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-${OUT:-/tmp/sni-scaling}}
shift || true
mkdir -p "$out"
LT=${LT:-target/release/sni-loadtest}
DISP=${DISP:-target/release/sni-dispatch}
for b in "$LT" "$DISP"; do
  [[ -x $b ]] || { echo "scaling.sh: $b is missing: cargo build --release -p sni-dispatch -p sni-loadtest" >&2; exit 2; }
done
peers=()
command -v haproxy >/dev/null && peers+=(haproxy)
if command -v nginx >/dev/null && [[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]]; then peers+=(nginx); fi
compare=()
if ((${#peers[@]})); then compare=(--compare "$(IFS=,; echo "${peers[*]}")"); fi
{
  echo "# $(date -u +%FT%TZ) $(uname -r), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  echo "# peers: ${peers[*]:-none installed}"
} | tee "$out/scaling.txt"
ulimit -n "$(ulimit -Hn)" || true
timeout "${LIMIT:-540}" "$LT" suite loadtest/suites/scaling.toml --dispatcher "$DISP" "${compare[@]}" \
  --json "$out/scaling.json" --quiet "$@" 2>&1 | tee -a "$out/scaling.txt"
