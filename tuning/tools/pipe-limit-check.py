#!/usr/bin/env python3
"""tuning/tools/pipe-limit-check.py [PIPES]

How many pipes of sni-dispatch's size (256 KiB, F_SETPIPE_SZ) can the current user create before
fs.pipe-user-pages-soft shrinks them? Creates PIPES pipes (default 400), asks each for 256 KiB, and
prints the first refusal and the capacities obtained. Run it as the service's user, e.g.
    setpriv --reuid=65534 --regid=65534 --clear-groups python3 tuning/tools/pipe-limit-check.py
"""
import fcntl
import os
import sys

F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032
SIZE = 256 * 1024


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    pipes, sizes, first_fail = [], {}, None
    for i in range(n):
        r, w = os.pipe()
        pipes.append((r, w))
        try:
            fcntl.fcntl(w, F_SETPIPE_SZ, SIZE)
        except OSError as e:
            if first_fail is None:
                first_fail = f"pipe #{i + 1}: {e.strerror}"
        s = fcntl.fcntl(w, F_GETPIPE_SZ)
        sizes[s] = sizes.get(s, 0) + 1
    soft = open("/proc/sys/fs/pipe-user-pages-soft").read().strip()
    print(f"uid {os.getuid()}, fs.pipe-user-pages-soft = {soft}: {n} pipes, first refusal: {first_fail or 'none'}")
    print("capacities: " + ", ".join(f"{k // 1024} KiB x {v}" for k, v in sorted(sizes.items(), reverse=True)))
    return 0 if first_fail is None else 1


if __name__ == "__main__":
    sys.exit(main())
