#!/bin/sh
# JA4 of every capture here, by FoxIO's own implementation: each .bin is replayed over
# loopback (one TCP connection per file, in name order) while tcpdump records, then FoxIO's
# python/ja4.py (needs tshark) fingerprints the recording. Prints "NAME JA4" lines, which
# tests.rs's JA4_OF_CAPTURES holds.
# Usage: ja4_check.sh JA4_CHECKOUT   (a checkout of github.com/FoxIO-LLC/ja4; needs tcpdump)
set -eu
cd "$(dirname "$0")"
ja4=$1/python/ja4.py
PORT=${PORT:-18444}
tmp=$(mktemp -d)
tcpdump -i lo -U -w "$tmp/replay.pcap" "tcp port $PORT" 2>/dev/null & dump=$!
sleep 1
python3 - "$PORT" ./*.bin <<'PY'
import socket, sys, threading
port, files = int(sys.argv[1]), sys.argv[2:]
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port)); srv.listen(8)
def drain():
    for _ in files:
        c, _ = srv.accept()
        while c.recv(65536):
            pass
        c.close()
t = threading.Thread(target=drain); t.start()
for f in files:
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(open(f, "rb").read()); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
t.join()
PY
sleep 1
kill "$dump"; wait "$dump" 2>/dev/null || true
python3 "$ja4" "$tmp/replay.pcap" -J --ja4 2>/dev/null > "$tmp/out.json" || python3 "$ja4" "$tmp/replay.pcap" -J > "$tmp/out.json"
python3 - "$tmp/out.json" ./*.bin <<'PY'
import json, sys
text = open(sys.argv[1]).read()
entries = []
dec = json.JSONDecoder(); i = 0
while i < len(text):
    if text[i].isspace():
        i += 1; continue
    obj, i = dec.raw_decode(text, i)
    entries.extend(obj if isinstance(obj, list) else [obj])
by_stream = {int(e["stream"]): e.get("JA4.1") or e.get("JA4") for e in entries}
for n, f in enumerate(sys.argv[2:]):
    print(f[2:-4], by_stream.get(n))
PY
rm -rf "$tmp"
