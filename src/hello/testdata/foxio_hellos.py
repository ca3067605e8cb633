#!/usr/bin/env python3
"""Extract the ClientHellos of FoxIO's JA4 test pcaps, with FoxIO's expected JA4 for each.

Usage: foxio_hellos.py JA4_CHECKOUT OUT_DIR

JA4_CHECKOUT is a checkout of github.com/FoxIO-LLC/ja4 (its pcap/ and
python/test/testdata/*.json). For every pcap, tshark (>= 4.0) gives the client's TCP payload
of each stream, cut to the whole TLS records of its first handshake message (as capture.py
does) and written as OUT_DIR/<pcap>.t<stream>.bin; for QUIC, tshark decrypts the Initial
packets and its "Reassembled QUIC CRYPTO" data (the bare handshake message) is written as
OUT_DIR/<pcap>.q<stream>.bin. OUT_DIR/expected.tsv lists each file with the "JA4.1" value
that FoxIO's python/test/testdata/<pcap>.json expects for that stream.

The output is FoxIO's data: it is not committed here. The test that reads it is
`cargo test --lib hello::tests::ja4::foxio_pcaps -- --ignored` with JA4_FOXIO_HELLOS=OUT_DIR.
"""
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture import hello_end  # noqa: E402


def tshark(*args):
    return subprocess.run(["tshark", "-n", *args], capture_output=True, text=True).stdout


def tcp_hellos(pcap):
    streams = {}  # stream -> [client port, bytes]
    for line in tshark("-r", pcap, "-Y", "tcp.len > 0", "-T", "fields",
                       "-e", "tcp.stream", "-e", "tcp.srcport", "-e", "tcp.payload").splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or not parts[2]:
            continue
        # Tunnelled packets (GRE, VXLAN...) list the inner TCP header's fields last.
        last = [p.split(",")[-1] for p in parts]
        stream, port, payload = int(last[0]), last[1], bytes.fromhex(last[2].replace(":", ""))
        st = streams.get(stream)
        if st is None:
            if payload[:2] != b"\x16\x03":
                continue
            st = streams[stream] = [port, b"", False]
        if st[0] == port and not st[2]:
            st[1] += payload
            try:
                end = hello_end(st[1])
            except ValueError:
                end = None
                st[2] = True
            if end is not None:
                st[1] = st[1][:end]
                st[2] = True
    return {s: b for s, (_, b, done) in streams.items() if done and hello_end(b) == len(b)}


def quic_hellos(pcap):
    out = {}
    text = tshark("-r", pcap, "-Y", "quic && tls.handshake.type == 1", "-T", "fields", "-e", "udp.stream")
    for stream in sorted({int(s.split(",")[-1]) for s in text.split() if s.split(",")[-1].isdigit()}):
        dump = tshark("-r", pcap, "-Y", "udp.stream == %d && tls.handshake.type == 1" % stream, "-x")
        m = re.search(r"Reassembled QUIC CRYPTO \((\d+) bytes\):\n((?:[0-9a-f]{4}  .*\n)+)", dump)
        if not m:
            continue
        data = b"".join(bytes.fromhex(l[6:54].replace(" ", "")) for l in m.group(2).splitlines())
        if data[:1] == b"\x01":
            out[stream] = data[:int(m.group(1))]
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    repo, outdir = sys.argv[1], sys.argv[2]
    os.makedirs(outdir, exist_ok=True)
    rows = []
    for name in sorted(os.listdir(os.path.join(repo, "pcap"))):
        expected_file = os.path.join(repo, "python", "test", "testdata", name + ".json")
        if not os.path.exists(expected_file):
            continue
        expected = {}
        for entry in json.load(open(expected_file)):
            if "JA4.1" in entry:
                expected.setdefault(int(entry["stream"]), entry["JA4.1"])
        pcap = os.path.join(repo, "pcap", name)
        for kind, hellos in (("t", tcp_hellos(pcap)), ("q", quic_hellos(pcap))):
            for stream, data in sorted(hellos.items()):
                want = expected.get(stream)
                if want is None or want[0] != kind:
                    continue
                fname = "%s.%s%d.bin" % (name, kind, stream)
                with open(os.path.join(outdir, fname), "wb") as f:
                    f.write(data)
                rows.append("%s\t%s" % (fname, want))
    with open(os.path.join(outdir, "expected.tsv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    print("%d hellos with expected JA4 in %s" % (len(rows), outdir), file=sys.stderr)


if __name__ == "__main__":
    main()
