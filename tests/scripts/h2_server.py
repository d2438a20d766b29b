#!/usr/bin/env python3
"""An HTTP/2 server (cleartext, prior knowledge) that takes WebSockets over
HTTP/2 (RFC 8441), for the http proxy's tests: what natd passes on to a
server spoken to in HTTP/2. Built on the `h2` state machine (PyPI), the
one its authors test RFC 8441 with; no WebSocket framing, only the
stream's bytes, which is all a proxy carries.

- It offers the extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL = 1)
  in its first SETTINGS, unless --no-connect-protocol.
- An extended CONNECT with `:protocol = websocket` gets 200, with the first
  subprotocol the client offered as `sec-websocket-protocol`; every DATA
  frame on that stream is answered with "NAME: " and its bytes, and the
  client's END_STREAM with the server's own.
- Any other request gets 200 and "NAME PATH\\n".
- Every request's header block is printed as one JSON line on stdout:
  {"stream": N, "headers": [[name, value], ...]}; "ready" once listening.

Usage: h2_server.py --listen ADDR:PORT --name NAME [--no-connect-protocol]
"""

import argparse
import asyncio
import json
import sys

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, DataReceived, RequestReceived, StreamEnded, StreamReset
from h2.settings import SettingCodes, Settings


class Connection(asyncio.Protocol):
    def __init__(self, name: str, connect_protocol: bool):
        self.name = name
        self.connect_protocol = connect_protocol
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.tunnels: set[int] = set()

    def connection_made(self, transport):
        self.transport = transport
        if self.connect_protocol:
            # h2's own first SETTINGS, and the offer in it (not in a later one).
            self.h2.local_settings = Settings(
                client=False,
                initial_values={
                    SettingCodes.MAX_CONCURRENT_STREAMS: 100,
                    SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
                    SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
                },
            )
        self.h2.initiate_connection()
        self.flush()

    def flush(self):
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)

    def data_received(self, data: bytes):
        try:
            events = self.h2.receive_data(data)
        except Exception as e:  # a protocol error: say so, and close
            print(json.dumps({"error": str(e)}), flush=True)
            self.flush()
            self.transport.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self.request(event.stream_id, event.headers)
            elif isinstance(event, DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.stream_id in self.tunnels and event.data:
                    self.h2.send_data(event.stream_id, f"{self.name}: ".encode() + event.data)
            elif isinstance(event, StreamEnded) and event.stream_id in self.tunnels:
                self.tunnels.discard(event.stream_id)
                self.h2.end_stream(event.stream_id)
            elif isinstance(event, StreamReset):
                self.tunnels.discard(event.stream_id)
            elif isinstance(event, ConnectionTerminated):
                self.transport.close()
        self.flush()

    def request(self, stream: int, headers):
        print(json.dumps({"stream": stream, "headers": [[n, v] for n, v in headers]}), flush=True)
        fields = dict(headers)
        if fields.get(":method") == "CONNECT" and fields.get(":protocol") == "websocket":
            answer = [(":status", "200")]
            offered = fields.get("sec-websocket-protocol")
            if offered:
                answer.append(("sec-websocket-protocol", offered.split(",")[0].strip()))
            self.h2.send_headers(stream, answer)
            self.tunnels.add(stream)
            return
        body = f"{self.name} {fields.get(':path', '')}\n".encode()
        self.h2.send_headers(stream, [(":status", "200"), ("content-length", str(len(body)))])
        self.h2.send_data(stream, body, end_stream=True)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--no-connect-protocol", action="store_true")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(args.name, not args.no_connect_protocol), host, int(port))
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
