#!/usr/bin/env python3
"""tuning/tools/idle-conns.py [--conns N] [--dispatcher BIN] [--port P] [-- sni-dispatch flags...]

What an idle proxied connection costs sni-dispatch: opens N client connections through a
passthrough route (each sends a captured ClientHello without SNI, routed by the no_sni fallback)
to a local back end that accepts and holds them, waits until the back end holds all N, then
reports the dispatcher's RSS, its open fds, how many of those are pipes, and the system's slab
growth (kernel memory of sockets and pipes), each per connection. Loopback only; the dispatcher
runs pinned (`--workers 1 --cpus 1`) with the extra flags given after `--`.
Example:  tuning/tools/idle-conns.py --conns 4000 -- --no-splice
"""
import argparse
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0])
    return out


def proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def fds(pid):
    total = pipes = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        total += 1
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:"):
                pipes += 1
        except OSError:
            pass
    return total, pipes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=4000)
    ap.add_argument("--dispatcher", default=os.path.join(ROOT, "target/release/sni-dispatch"))
    ap.add_argument("--port", type=int, default=28543)
    ap.add_argument("flags", nargs="*")
    a = ap.parse_args()
    hello = open(os.path.join(ROOT, "src/hello/testdata/openssl-nosni.bin"), "rb").read()

    back = socket.socket()
    back.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    back.bind(("127.0.0.1", 0))
    back.listen(65535)
    back.setblocking(False)
    bport = back.getsockname()[1]

    tmp = tempfile.mkdtemp()
    cfg = os.path.join(tmp, "idle.toml")
    with open(cfg, "w") as f:
        f.write(
            f'[[listener]]\naddress = "127.0.0.1:{a.port}"\n\n[fallback]\nno_sni = "hold"\n\n'
            f'[[route]]\nname = "hold"\naction = "passthrough"\nbackends = ["127.0.0.1:{bport}"]\n'
        )
    cmd = ["taskset", "-c", "1", a.dispatcher, "run", "--config", cfg, "--workers", "1", "--cpus", "1", "--log", "warn"] + a.flags
    d = subprocess.Popen(cmd)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", a.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(0.5)
        base_rss = proc_status(d.pid, "VmRSS")
        base_fds, base_pipes = fds(d.pid)
        m0 = meminfo()

        held = []
        sel = selectors.DefaultSelector()
        sel.register(back, selectors.EVENT_READ)
        clients = []
        got_hello = 0
        pending = {}
        for i in range(a.conns):
            c = socket.create_connection(("127.0.0.1", a.port))
            c.sendall(hello)
            clients.append(c)
            if i % 200 == 199:
                time.sleep(0.05)
        deadline = time.time() + 30
        while got_hello < a.conns and time.time() < deadline:
            for key, _ in sel.select(0.5):
                if key.fileobj is back:
                    while True:
                        try:
                            s, _ = back.accept()
                        except BlockingIOError:
                            break
                        s.setblocking(False)
                        pending[s] = 0
                        sel.register(s, selectors.EVENT_READ)
                else:
                    s = key.fileobj
                    data = s.recv(65536)
                    pending[s] += len(data)
                    if pending[s] >= len(hello):
                        sel.unregister(s)
                        held.append(s)
                        got_hello += 1
        time.sleep(1.0)
        rss = proc_status(d.pid, "VmRSS")
        nfd, npipe = fds(d.pid)
        m1 = meminfo()
        n = max(got_hello, 1)
        slab = (m1["Slab"] - m0["Slab"]) * 1024
        print(f"flags: {' '.join(a.flags) or '(defaults)'}")
        print(f"connections held end to end: {got_hello} of {a.conns}")
        print(f"dispatcher RSS: {base_rss} KiB idle -> {rss} KiB = {(rss - base_rss) * 1024 / n:.0f} B/conn")
        print(f"dispatcher fds: {base_fds} -> {nfd} = {(nfd - base_fds) / n:.2f}/conn, of which pipe ends {npipe - base_pipes} ({(npipe - base_pipes) / n:.2f}/conn)")
        print(f"system Slab: +{slab / 1048576:.1f} MiB = {slab / n:.0f} B/conn (includes the client and back-end sockets: 2 of the 4 per connection are not the dispatcher's)")
        for s in clients + held:
            s.close()
        return 0 if got_hello == a.conns else 1
    finally:
        d.send_signal(signal.SIGTERM)
        try:
            d.wait(10)
        except subprocess.TimeoutExpired:
            d.kill()


if __name__ == "__main__":
    sys.exit(main())
