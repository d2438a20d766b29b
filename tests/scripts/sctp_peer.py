"""An SCTP peer on a raw IPv4 socket (protocol 132), for the end-to-end
tests: the kernel of the test machine has no SCTP. Its own CRC32c (RFC 9260
appendix, table-driven, independent of the gateway's code) seals what it
sends and checks what it receives.

  sctp_peer.py server COUNT SECONDS [BIG]   answer COUNT senders (and wait
                                            for BIG datagrams over 1,400 bytes),
                                            print what was seen
  sctp_peer.py client SERVER PORT TAG [SIZE] send INITs with TAG until an
                                            answer; then, with SIZE, one DATA
                                            packet of SIZE bytes (fragmented
                                            by the kernel) and its echo back

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


# IP_MTU_DISCOVER = IP_PMTUDISC_DONT: no DF, so the kernel fragments what
# does not fit the link (a raw socket otherwise refuses it).
IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0


def server(count, seconds, want_big=0):
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
    sock.settimeout(0.5)
    peers, bad, big = {}, 0, 0
    deadline = time.time() + seconds
    while time.time() < deadline and (len(peers) < count or big < want_big):
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
        if len(datagram) > 1400:
            big += 1
        else:
            peers["%s:%d" % (src, sport)] = data.decode(errors="replace")
        # An INIT ACK-typed answer echoing the data, to the port it came from.
        sock.sendto(packet(dport, sport, vtag, 2, b"echo:" + data), (src, 0))
    print(json.dumps({"peers": peers, "bad_crc": bad, "big": big}), flush=True)


def client(server_addr, port, tag, size=0):
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
    sock.settimeout(1.0)
    vtag = crc32c(tag.encode()) or 1
    for attempt in range(5):
        sock.sendto(packet(5000, port, vtag, 1, tag.encode()), (server_addr, 0))
        for sctp, data in answers(sock, server_addr, 1.0, 16):
            sport, dport, got_vtag = struct.unpack("!HHI", sctp[:8])
            answer = {"crc_ok": crc_holds(sctp), "dport": dport, "vtag_ok": got_vtag == vtag, "reply": data.decode(errors="replace"), "attempts": attempt + 1}
            if size:
                answer["big"] = big_exchange(sock, server_addr, port, vtag, tag, size)
            print(json.dumps(answer), flush=True)
            return
    print(json.dumps({"crc_ok": False, "reply": None, "attempts": 5}), flush=True)


def big_exchange(sock, server_addr, port, vtag, tag, size):
    """One DATA packet of `size` bytes (the kernel fragments it on the way
    out, the server's reassembles it) and the echo back, as big."""
    body = (tag.encode() * (size // len(tag) + 1))[: size - 16]
    sock.sendto(packet(5000, port, vtag, 0, body), (server_addr, 0))
    for sctp, data in answers(sock, server_addr, 3.0, 1400):
        return {"crc_ok": crc_holds(sctp), "len": len(sctp), "echoed": data == b"echo:" + body}
    return {"crc_ok": False, "len": 0, "echoed": False}


def answers(sock, server_addr, seconds, min_len):
    """The server's SCTP packets of at least `min_len` bytes that come within
    `seconds`, with their first chunk's data."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            datagram, _ = sock.recvfrom(65535)
        except socket.timeout:
            return
        src, sctp = split(datagram)
        if src == server_addr and len(sctp) >= min_len:
            yield sctp, sctp[16 : 16 + struct.unpack("!H", sctp[14:16])[0] - 4]


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    else:
        client(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]) if len(sys.argv) > 5 else 0)
