#!/bin/sh
# Re-create every capture in this directory. Needs openssl, curl and chromium on PATH.
set -eu
cd "$(dirname "$0")"
PORT=${PORT:-18443}
cap() { # cap NAME CLIENT-COMMAND...
    name=$1; shift
    python3 capture.py "$PORT" "$name.bin" & pid=$!
    sleep 0.5
    timeout 20 "$@" >/dev/null 2>&1 </dev/null || true
    wait "$pid"
}
cap openssl-sni   openssl s_client -connect 127.0.0.1:$PORT -servername www.example.com
cap openssl-nosni openssl s_client -connect 127.0.0.1:$PORT -noservername
cap openssl-tls12 openssl s_client -connect 127.0.0.1:$PORT -servername www.example.com -tls1_2
cap curl          curl -k --resolve www.example.com:$PORT:127.0.0.1 https://www.example.com:$PORT/
profile=$(mktemp -d)
cap chromium-pq   chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --host-resolver-rules="MAP www.example.com 127.0.0.1" \
    --ignore-certificate-errors "https://www.example.com:$PORT/"
rm -rf "$profile"
ls -l ./*.bin
