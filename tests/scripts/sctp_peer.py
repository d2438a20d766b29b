"""An SCTP peer on a raw IPv4 socket (protocol 132), for the end-to-end
tests: the kernel of the test machine has no SCTP. Its own CRC32c (RFC 9260
appendix, table-driven, independent of the gateway's code) seals what it
sends and checks what it receives.

  sctp_peer.py server COUNT SECONDS   answer COUNT senders, print what was seen
  sctp_peer.py client SERVER PORT TAG send INITs with TAG until an answer

Both print one JSON object on stdout.
"""
import json
import socket
import struct
import sys
import time

TABLE = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
    TABLE.append(c)


def crc32c(data):
    c = 0xFFFFFFFF
    for byte in data:
        c = (c >> 8) ^ TABLE[(c ^ byte) & 0xFF]
    return c ^ 0xFFFFFFFF


def crc_holds(sctp):
    """The receiver's check (RFC 9260 section 6.8): the field, read
    least-significant byte first, is the CRC with the field taken as zero."""
    if len(sctp) < 16:
        return False
    (field,) = struct.unpack("<I", sctp[8:12])
    return field == crc32c(sctp[:8] + b"\0\0\0\0" + sctp[12:])


def packet(sport, dport, vtag, chunk_type, data):
    padded = data + b"\0" * (-len(data) % 4)
    chunk = struct.pack("!BBH", chunk_type, 0, 4 + len(data)) + padded
    unsealed = struct.pack("!HHII", sport, dport, vtag, 0) + chunk
    return unsealed[:8] + struct.pack("<I", crc32c(unsealed)) + unsealed[12:]


def split(datagram):
    ihl = (datagram[0] & 0x0F) * 4
    return socket.inet_ntoa(datagram[12:16]), datagram[ihl:]


def server(count, seconds):
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
    sock.settimeout(0.5)
    peers, bad = {}, 0
    deadline = time.time() + seconds
    while time.time() < deadline and len(peers) < count:
        try:
            datagram, _ = sock.recvfrom(65535)
        except socket.timeout:
            continue
        src, sctp = split(datagram)
        if not crc_holds(sctp):
            bad += 1
            continue
        sport, dport, vtag = struct.unpack("!HHI", sctp[:8])
        data = sctp[16 : 16 + struct.unpack("!H", sctp[14:16])[0] - 4]
        peers["%s:%d" % (src, sport)] = data.decode(errors="replace")
        # An INIT ACK-typed answer echoing the data, to the port it came from.
        sock.sendto(packet(dport, sport, vtag, 2, b"echo:" + data), (src, 0))
    print(json.dumps({"peers": peers, "bad_crc": bad}), flush=True)


def client(server_addr, port, tag):
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
    sock.settimeout(1.0)
    vtag = crc32c(tag.encode()) or 1
    for attempt in range(5):
        sock.sendto(packet(5000, port, vtag, 1, tag.encode()), (server_addr, 0))
        deadline = time.time() + 1.0
        while time.time() < deadline:
            try:
                datagram, _ = sock.recvfrom(65535)
            except socket.timeout:
                break
            src, sctp = split(datagram)
            if src != server_addr or len(sctp) < 16:
                continue
            sport, dport, got_vtag = struct.unpack("!HHI", sctp[:8])
            data = sctp[16 : 16 + struct.unpack("!H", sctp[14:16])[0] - 4]
            print(json.dumps({"crc_ok": crc_holds(sctp), "dport": dport, "vtag_ok": got_vtag == vtag, "reply": data.decode(errors="replace"), "attempts": attempt + 1}), flush=True)
            return
    print(json.dumps({"crc_ok": False, "reply": None, "attempts": 5}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(int(sys.argv[2]), float(sys.argv[3]))
    else:
        client(sys.argv[2], int(sys.argv[3]), sys.argv[4])
