#!/usr/bin/env python3
"""Re-create fuzz/seeds/<target>/ from the captures in src/hello/testdata (ci.sh copies the
seeds into the git-ignored corpus/ before each run)."""
import glob
import os

here = os.path.dirname(os.path.abspath(__file__))
caps = sorted(glob.glob(os.path.join(here, "..", "src", "hello", "testdata", "*.bin")))


def message(records):
    out, at = b"", 0
    while at + 5 <= len(records):
        n = int.from_bytes(records[at + 3:at + 5], "big")
        out += records[at + 5:at + 5 + n]
        at += 5 + n
    return out


def reframe(msg, size):
    return b"".join(b"\x16\x03\x01" + len(msg[i:i + size]).to_bytes(2, "big") + msg[i:i + size]
                    for i in range(0, len(msg), size))


def server_hello(selected):
    body = b"\x03\x03" + b"\x5a" * 32 + b"\x20" + b"\x11" * 32 + b"\x13\x01\x00"
    exts = b"\x00\x33\x00\x02\x00\x1d" + (b"\x00\x2b\x00\x02" + selected if selected else b"")
    body += len(exts).to_bytes(2, "big") + exts
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + len(hs).to_bytes(2, "big") + hs


seeds = {"client_hello": {}, "parse_message": {}, "framing": {}, "server_hello": {}, "ja4": {}}
for path in caps:
    name = os.path.basename(path)[:-4]
    rec = open(path, "rb").read()
    msg = message(rec)
    seeds["client_hello"][name] = rec
    seeds["client_hello"][name + "-7B-records"] = reframe(msg, 7)
    seeds["parse_message"][name] = msg
    seeds["framing"][name + "-whole"] = b"\x00" + rec
    seeds["framing"][name + "-1B-records-1B-reads"] = b"\x01\x00" + reframe(msg, 1)
    seeds["framing"][name + "-100B-records-mixed-reads"] = b"\x03\x00\x06\x63" + reframe(msg, 100)
    seeds["ja4"][name] = rec
    seeds["ja4"][name + "-message"] = msg
seeds["server_hello"]["tls13"] = server_hello(b"\x03\x04")
seeds["server_hello"]["tls12"] = server_hello(None)
seeds["server_hello"]["alert"] = b"\x15\x03\x03\x00\x02\x02\x28"
for target, files in seeds.items():
    d = os.path.join(here, "seeds", target)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    print(target, len(files))
