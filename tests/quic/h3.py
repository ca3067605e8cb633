#!/usr/bin/env python3
"""aioquic HTTP/3 programs for tests/quic.rs (aioquic from PyPI; .ci/run installs it).

  h3.py server --port P --name A --cert C --key K
      An HTTP/3 server on 127.0.0.1:P (UDP); every GET is answered "NAME PATH". Prints
      "READY P" once bound, serves until killed.
  h3.py client --connect HOST:PORT --sni NAME [--path /x] [--alpn-pad N] [--order ...]
      One HTTP/3 GET; prints the status line and body, exits 0 on a 200, 1 otherwise.
      --alpn-pad N offers N extra ALPN values (after h3) so the ClientHello spans several
      Initial packets; --order rev|dup|revdup sends the client's first Initial datagrams
      reversed, with a duplicate of the first, or both. --local-host ADDR sends from ADDR.
      --then-path /y --pause-file F: after the first GET, waits for F to exist, then GETs /y on
      the same QUIC connection (a binary upgrade happens in between).
"""

import argparse
import asyncio
import contextlib
import os
import socket
import ssl
import sys

from aioquic.asyncio import connect, serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ProtocolNegotiated, QuicEvent


class Server(QuicConnectionProtocol):
    name = b"?"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.h3 = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated):
            self.h3 = H3Connection(self._quic)
        if self.h3 is None:
            return
        for e in self.h3.handle_event(event):
            if isinstance(e, HeadersReceived):
                path = dict(e.headers).get(b":path", b"/")
                body = self.name + b" " + path
                self.h3.send_headers(e.stream_id, [(b":status", b"200"), (b"content-length", str(len(body)).encode())])
                self.h3.send_data(e.stream_id, body, end_stream=True)
        self.transmit()


class Client(QuicConnectionProtocol):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.h3 = H3Connection(self._quic)
        self.done = asyncio.get_event_loop().create_future()
        self.status = b""
        self.body = b""

    def quic_event_received(self, event: QuicEvent) -> None:
        for e in self.h3.handle_event(event):
            if isinstance(e, HeadersReceived):
                self.status = dict(e.headers).get(b":status", b"")
            elif isinstance(e, DataReceived):
                self.body += e.data
                if e.stream_ended and not self.done.done():
                    self.done.set_result(True)

    async def get(self, authority: str, path: str):
        self.done = asyncio.get_event_loop().create_future()
        self.status, self.body = b"", b""
        sid = self._quic.get_next_available_stream_id()
        self.h3.send_headers(
            sid,
            [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", authority.encode()), (b":path", path.encode())],
            end_stream=True,
        )
        self.transmit()
        await self.done


class Mangle:
    """Wraps the client's transport: holds its first `hold` datagrams and sends them reordered."""

    def __init__(self, inner, hold, order):
        self.inner, self.hold, self.order, self.held = inner, hold, order, []

    def sendto(self, data, addr=None):
        if self.hold and len(self.held) < self.hold:
            self.held.append((data, addr))
            if len(self.held) < self.hold:
                return
            batch = list(self.held)
            if "rev" in self.order:
                batch.reverse()
            if "dup" in self.order:
                batch.insert(1, self.held[0])
            for d, a in batch:
                self.inner.sendto(d, a)
            self.hold = 0
            return
        self.inner.sendto(data, addr)

    def __getattr__(self, k):
        return getattr(self.inner, k)


@contextlib.asynccontextmanager
async def open_client(host, port, cfg, local_host):
    """aioquic's `connect`, from `local_host` when one is given (its own binds "::" only)."""
    if local_host == "::":
        async with connect(host, port, configuration=cfg, create_protocol=Client, wait_connected=False) as c:
            yield c
        return
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((local_host, 0))
    transport, protocol = await loop.create_datagram_endpoint(lambda: Client(QuicConnection(configuration=cfg)), sock=sock)
    try:
        protocol.connect((host, port), transmit=False)
        yield protocol
    finally:
        protocol.close()
        await protocol.wait_closed()
        transport.close()


async def run_client(args) -> int:
    host, port = args.connect.rsplit(":", 1)
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN + [f"x-pad-{i:04d}-{'z' * 20}" for i in range(args.alpn_pad)])
    cfg.server_name = args.sni
    cfg.verify_mode = ssl.CERT_NONE
    cfg.idle_timeout = 10.0
    hold = 0
    if args.order != "none":
        # The client's first flight: as many datagrams as its Initials need (about 1,150 bytes
        # of CRYPTO data each).
        hold = 1 + (len(b"".join(p.encode() for p in cfg.alpn_protocols)) + 400) // 1100
    try:
        async with open_client(host, int(port), cfg, args.local_host) as c:
            if hold:
                c._transport = Mangle(c._transport, hold, args.order)
            await asyncio.wait_for(c.get(args.sni, args.path), args.timeout)
            print(c.status.decode(), c.body.decode(), flush=True)
            if c.status != b"200":
                return 1
            if args.then_path:
                # The same connection, once the file exists (a binary upgrade in between).
                deadline = asyncio.get_event_loop().time() + args.timeout
                while not os.path.exists(args.pause_file):
                    if asyncio.get_event_loop().time() > deadline:
                        print("failed: no", args.pause_file, flush=True)
                        return 1
                    await asyncio.sleep(0.05)
                await asyncio.wait_for(c.get(args.sni, args.then_path), args.timeout)
                print(c.status.decode(), c.body.decode(), flush=True)
                return 0 if c.status == b"200" else 1
            return 0
    except (asyncio.TimeoutError, ConnectionError) as e:
        print("failed:", type(e).__name__, e)
        return 1


async def run_server(args) -> None:
    cfg = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    cfg.load_cert_chain(args.cert, args.key)
    Server.name = args.name.encode()
    await serve(args.host, args.port, configuration=cfg, create_protocol=Server)
    print("READY", args.port, flush=True)
    await asyncio.Future()


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    c = sub.add_parser("client")
    c.add_argument("--connect", required=True)
    c.add_argument("--sni", required=True)
    c.add_argument("--path", default="/")
    c.add_argument("--alpn-pad", type=int, default=0)
    c.add_argument("--order", default="none", choices=["none", "rev", "dup", "revdup"])
    c.add_argument("--timeout", type=float, default=15.0)
    c.add_argument("--then-path", help="after the first GET, another on the same connection once --pause-file exists")
    c.add_argument("--pause-file", default="")
    c.add_argument("--local-host", default="::", help="the address the client sends from (127.0.0.5: another client)")
    a = p.parse_args()
    if a.cmd == "server":
        asyncio.run(run_server(a))
        return 0
    return asyncio.run(run_client(a))


if __name__ == "__main__":
    sys.exit(main())
