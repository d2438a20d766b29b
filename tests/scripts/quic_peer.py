#!/usr/bin/env python3
"""A QUIC server and client (aioquic) for natd's QUIC proxy tests.

server: answers each bidirectional stream. "who" -> "NAME CLIENT_IP:PORT"
        (the client address as the server sees it); "blob N" -> N bytes.
client: one connection to --connect with --sni; --requests "who" streams
        --gap-ms apart, then --blob bytes; prints one JSON line with the
        answers. --wide-hello adds long ALPN names so the ClientHello spans
        several Initial packets. Everything is bounded by --timeout.
"""
import argparse
import asyncio
import json
import ssl
import sys

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamDataReceived

ALPN = "nat-test"


class Server(QuicConnectionProtocol):
    name = "?"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._requests = {}

    def quic_event_received(self, event):
        if not isinstance(event, StreamDataReceived):
            return
        buf = self._requests.get(event.stream_id, b"") + event.data
        self._requests[event.stream_id] = buf
        if not event.end_stream:
            return
        words = buf.decode(errors="replace").split()
        if words[:1] == ["who"]:
            host, port = self._quic._network_paths[0].addr[:2]
            answer = f"{Server.name} {host}:{port}".encode()
        elif words[:1] == ["blob"] and len(words) == 2:
            answer = b"x" * int(words[1])
        else:
            answer = b"?"
        self._quic.send_stream_data(event.stream_id, answer, end_stream=True)
        self.transmit()


async def run_server(args):
    Server.name = args.name
    config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    config.load_cert_chain(args.cert, args.key)
    host, port = args.listen.rsplit(":", 1)
    await serve(host, int(port), configuration=config, create_protocol=Server)
    print("ready", flush=True)
    await asyncio.Future()


async def ask(client, request):
    reader, writer = await client.create_stream()
    writer.write(request.encode())
    writer.write_eof()
    return await reader.read()


async def run_client(args):
    alpns = [ALPN]
    if args.wide_hello:
        alpns += [f"filler-{i}-" + "a" * 200 for i in range(8)]
    config = QuicConfiguration(is_client=True, alpn_protocols=alpns, server_name=args.sni)
    config.verify_mode = ssl.CERT_NONE
    config.idle_timeout = args.timeout
    host, port = args.connect.rsplit(":", 1)
    result = {"answers": [], "blob": 0}
    async with connect(host, int(port), configuration=config, wait_connected=True) as client:
        for i in range(args.requests):
            if i and args.gap_ms:
                await asyncio.sleep(args.gap_ms / 1000)
            result["answers"].append((await ask(client, "who")).decode())
        if args.blob:
            result["blob"] = len(await ask(client, f"blob {args.blob}"))
    print(json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--listen", required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    c = sub.add_parser("client")
    c.add_argument("--connect", required=True)
    c.add_argument("--sni", required=True)
    c.add_argument("--requests", type=int, default=1)
    c.add_argument("--gap-ms", type=int, default=0)
    c.add_argument("--blob", type=int, default=0)
    c.add_argument("--wide-hello", action="store_true")
    c.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    if args.role == "server":
        asyncio.run(run_server(args))
    else:
        try:
            asyncio.run(asyncio.wait_for(run_client(args), args.timeout))
        except (asyncio.TimeoutError, ConnectionError) as e:
            print(json.dumps({"error": type(e).__name__ + ": " + str(e)}), flush=True)
            sys.exit(2)


if __name__ == "__main__":
    main()
