#!/usr/bin/env python3
"""tuning/tools/reuseport-cbpf-check.py [CONNS]

Does this kernel steer SO_REUSEPORT connections to the listener of the CPU that received the SYN
when a classic BPF program returning the CPU number is attached (SO_ATTACH_REUSEPORT_CBPF)?

One listening socket per CPU on 127.0.0.1 (random port), joined to one SO_REUSEPORT group in CPU
order. For each CPU, a client process pinned to that CPU opens CONNS connections (default 400).
On loopback the SYN is processed in the sender's softirq, on the sender's CPU (no RPS on lo), so
with the program every connection of the client on CPU c must be accepted by listener c; without it
the kernel's 4-tuple hash spreads them over all listeners. Prints both distributions; exit 0 when
steering is exact, 1 otherwise. Loopback only.
"""
import ctypes
import os
import select
import socket
import struct
import sys

SO_ATTACH_REUSEPORT_CBPF = 51
SKF_AD_OFF = -0x1000
SKF_AD_CPU = 36
BPF_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_RET_A = 0x06 | 0x10  # BPF_RET | BPF_A


def cbpf_cpu_program():
    insns = [
        (BPF_LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_CPU) & 0xFFFFFFFF),  # A = raw_smp_processor_id()
        (BPF_RET_A, 0, 0, 0),  # return A: index of the socket in the group
    ]
    raw = b"".join(struct.pack("HBBI", *i) for i in insns)
    buf = ctypes.create_string_buffer(raw)
    fprog = struct.pack("HL", len(insns), ctypes.addressof(buf))
    return fprog, buf  # keep buf alive


def run(cpus, conns, steer):
    listeners = []
    port = 0
    for _ in cpus:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        port = s.getsockname()[1]
        s.listen(4096)
        s.setblocking(False)
        listeners.append(s)
    keep = None
    if steer:
        fprog, keep = cbpf_cpu_program()
        listeners[0].setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    counts = {c: [0] * len(cpus) for c in cpus}
    for ci, cpu in enumerate(cpus):
        pid = os.fork()
        if pid == 0:
            os.sched_setaffinity(0, {cpu})
            for _ in range(conns):
                c = socket.create_connection(("127.0.0.1", port))
                c.close()
            os._exit(0)
        got = 0
        while got < conns:
            r, _, _ = select.select(listeners, [], [], 5)
            if not r:
                break
            for s in r:
                try:
                    a, _ = s.accept()
                    a.close()
                    counts[cpu][listeners.index(s)] += 1
                    got += 1
                except BlockingIOError:
                    pass
        os.waitpid(pid, 0)
    for s in listeners:
        s.close()
    del keep
    return counts


def main():
    conns = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("needs at least 2 CPUs")
        return 1
    ok = True
    for steer in (False, True):
        counts = run(cpus, conns, steer)
        print(("with" if steer else "without") + " SO_ATTACH_REUSEPORT_CBPF (A = CPU):")
        for cpu in cpus:
            row = counts[cpu]
            print(f"  client on CPU {cpu}: accepted by listener " + ", ".join(f"{i}: {n}" for i, n in enumerate(row)))
            if steer and row[cpus.index(cpu)] != conns:
                ok = False
    print("steering exact" if ok else "steering NOT exact")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
