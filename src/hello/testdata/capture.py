#!/usr/bin/env python3
"""Capture the first TLS records a client sends: enough to hold its whole ClientHello.

Usage: capture.py PORT OUT.bin [--timeout SECS]

Listens on 127.0.0.1:PORT, accepts ONE connection, reads until the TLS records read so far
contain the complete handshake message that starts in the first record (the ClientHello,
possibly spread over several records), writes exactly those whole records to OUT.bin and
closes the connection (the client then fails its handshake, which is expected). Stops on
timeout / EOF and saves whatever arrived (with a warning) so that odd clients can be studied.
"""
import socket
import sys


def hello_end(buf):
    """Return the number of bytes of whole records that hold the full first handshake
    message, or None if more bytes are needed."""
    pos = 0
    msg = bytearray()
    while pos + 5 <= len(buf):
        if buf[pos] != 0x16:
            raise ValueError("record type %#x at %d is not handshake" % (buf[pos], pos))
        rlen = int.from_bytes(buf[pos + 3:pos + 5], "big")
        if pos + 5 + rlen > len(buf):
            return None
        msg += buf[pos + 5:pos + 5 + rlen]
        pos += 5 + rlen
        if len(msg) >= 4:
            need = 4 + int.from_bytes(msg[1:4], "big")
            if len(msg) >= need:
                return pos
    return None


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    port, out = int(sys.argv[1]), sys.argv[2]
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--timeout" else 20.0
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1)
    srv.settimeout(timeout)
    print("listening on 127.0.0.1:%d" % port, file=sys.stderr, flush=True)
    conn, peer = srv.accept()
    conn.settimeout(timeout)
    buf = b""
    end = None
    try:
        while end is None:
            chunk = conn.recv(65536)
            if not chunk:
                break
            buf += chunk
            end = hello_end(buf)
    except (socket.timeout, ValueError) as e:
        print("warning: %s" % e, file=sys.stderr)
    conn.close()
    srv.close()
    if end is None:
        print("warning: incomplete hello, saving %d raw bytes" % len(buf), file=sys.stderr)
        end = len(buf)
    with open(out, "wb") as f:
        f.write(buf[:end])
    print("%s: %d bytes from %s:%d" % (out, end, peer[0], peer[1]), file=sys.stderr)


if __name__ == "__main__":
    main()
