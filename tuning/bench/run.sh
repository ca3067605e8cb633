#!/usr/bin/env bash
# tuning/bench/run.sh WORKLOAD LABEL [sni-dispatch flags...]
#
# One before/after measurement for tuning/README.md: writes a one-workload sni-loadtest suite
# (loopback only: clients, back ends and dispatcher on 127.0.0.0/8), runs it against
# target/release/sni-dispatch with the given flags appended to
#     sni-dispatch run --config GENERATED --workers $WORKERS --cpus $DCPUS
# and prints the report. Dispatcher pinned to CPU 1, load and back ends to CPU 0, unless
# WORKERS/DCPUS are set (e.g. WORKERS=2 DCPUS=0-1 to measure two workers).
#   WORKLOAD: short   (hello_replay: ClientHello in, 64 B out, close; closed loop, 16 conns)
#             bulk    (4 connections each pushing and pulling 256 MiB, CRC-checked)
#             small   (full_tls through a passthrough route to a TLS back end: small exchanges)
#             slow    (open loop of 2000 good hellos/s beside 2000 slowloris clients trickling a
#                      hello one byte per 500 ms: what good clients see while slow ones are held)
#   RUNS (default 2), DURATION (default 8 s; bulk stops at its byte count), PORT and BPORT (the
#   dispatcher's and the back ends' first port; default: ports free at start, picked by
#   sni-loadtest), JSON (write the figures there too).
# Example: tuning/bench/run.sh bulk no-splice --no-splice
set -euo pipefail
cd "$(dirname "$0")/../.."

[[ $# -ge 2 ]] || { sed -n '2,18p' "$0" >&2; exit 2; }
workload=$1 label=$2
shift 2
RUNS=${RUNS:-2} DURATION=${DURATION:-8} PORT=${PORT:-0} BPORT=${BPORT:-0}
WORKERS=${WORKERS:-1} DCPUS=${DCPUS:-1}
LT=${LT:-target/release/sni-loadtest}
DISP=${DISP:-target/release/sni-dispatch}

args=""
for a in "$@"; do args+="\"$a\", "; done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
suite=$tmp/$workload-$label.toml
{
    cat <<EOF
name = "tuning-$workload-$label"
description = "tuning/bench/run.sh $workload $label $*"
runs = $RUNS

[cpus]
dispatcher = "$DCPUS"
workers = $WORKERS
load = "0"
backends = "0"

[dispatcher]
port = $PORT
extra_args = [${args%, }]

[backends]
port = $BPORT
threads = 64

[[route]]
name = "site"
action = "passthrough"
sni = ["www.example.com"]
sni_pattern = "s{}.example.com"
sni_count = 100
backend = "hello"

[[route]]
name = "bulk"
action = "passthrough"
sni = ["bulk.example.com"]
backend = "bulk"

[[route]]
name = "tlsbe"
action = "passthrough"
sni = ["tls.example.com"]
backend = "tls"
EOF
    case $workload in
    short)
        cat <<EOF

[[workload]]
name = "short"
kind = "hello_replay"
hello = "src/hello/testdata/openssl-sni.bin"
sni = { dist = "uniform", routes = ["site"] }
concurrency = 16
warmup_s = 1
duration_s = $DURATION
max_count = 2000000
EOF
        ;;
    bulk)
        cat <<EOF

[[workload]]
name = "bulk"
kind = "bulk"
hello = "src/hello/testdata/openssl-sni.bin"
sni = { dist = "fixed", names = ["bulk.example.com"] }
push_mib = 256
pull_mib = 256
concurrency = 2
max_count = 4
duration_s = 20
io_timeout_ms = 30000
EOF
        ;;
    small)
        cat <<EOF

[[workload]]
name = "tls-passthrough"
kind = "full_tls"
sni = { dist = "fixed", names = ["tls.example.com"] }
concurrency = 8
warmup_s = 1
duration_s = $DURATION
max_count = 500000
EOF
        ;;
    slow)
        cat <<EOF

[[workload]]
name = "under-trickle"
kind = "hello_replay"
hello = "src/hello/testdata/openssl-sni.bin"
sni = { dist = "uniform", routes = ["site"] }
rate = 2000
concurrency = 64
duration_s = $DURATION
slowloris = { connections = 2000, mode = "trickle", interval_ms = 500 }
EOF
        ;;
    *) echo "unknown workload $workload (short, bulk, small, slow)" >&2; exit 2 ;;
    esac
} >"$suite"

echo "### $workload / $label: $DISP run --workers $WORKERS --cpus $DCPUS $*"
extra=()
[[ -n ${JSON:-} ]] && extra=(--json "$JSON")
"$LT" suite "$suite" --dispatcher "$DISP" --quiet "${extra[@]}"
