"""An IPsec ESP peer on raw IPv4 sockets (protocol 50), for the end-to-end
tests: the kernel of the test machine has no ESP (no CONFIG_INET_ESP).
scapy's SecurityAssociation encrypts and decrypts (transport mode, AES-GCM
with a 128-bit key, manual keys: each SA's key is derived from its SPI, so
both ends agree without IKE, and no two SAs share a key). The peer answers
an SA with SPI s on the SA with SPI reply_spi(s).

  esp_peer.py server SECONDS COUNT       answer every packet until COUNT SAs
                                         were answered ROUNDS times, the first
                                         packet of each SA FIRST_DELAY late (a
                                         slow peer: another host's first SA to
                                         it then meets an unanswered one at the
                                         gateway); print what was seen
  esp_peer.py client ME PEER SPI TAG     send TAG on SPI until a reply
                                         decrypts, then ROUNDS more, each
                                         answered; print what came back

Both print one JSON object on stdout.
"""
import hashlib
import json
import socket
import struct
import sys
import time

from scapy.all import ESP, IP, UDP, Raw
from scapy.layers.ipsec import SecurityAssociation

ROUNDS = 5
FIRST_DELAY = 1.5


def reply_spi(spi):
    return spi ^ 0x00FF00FF


def security_association(spi):
    # AES-GCM's key is 16 bytes of key and 4 of salt (RFC 4106).
    key = hashlib.sha256(b"natd esp test %08x" % spi).digest()[:20]
    return SecurityAssociation(ESP, spi=spi, crypt_algo="AES-GCM", crypt_key=key)


def spi_of(ip):
    return struct.unpack("!I", bytes(ip[ESP])[:4])[0]


def sockets(timeout):
    receive = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)
    receive.settimeout(timeout)
    send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    return receive, send


def server(seconds, count):
    receive, send = sockets(0.5)
    sas, answered, sources, bad = {}, {}, set(), 0
    deadline = time.time() + seconds
    while time.time() < deadline and sum(1 for a in answered.values() if a["packets"] > ROUNDS) < count:
        try:
            datagram, _ = receive.recvfrom(65535)
        except socket.timeout:
            continue
        ip = IP(datagram)
        sources.add(ip.src)
        if ESP not in ip:
            continue
        spi = spi_of(ip)
        sa = sas.setdefault(spi, security_association(spi))
        try:
            tag = sa.decrypt(ip)[Raw].load.decode()
        except Exception:
            bad += 1
            continue
        if "%08x" % spi not in answered:
            time.sleep(FIRST_DELAY)
        seen = answered.setdefault("%08x" % spi, {"from": ip.src, "to": ip.dst, "tag": tag, "packets": 0})
        seen["packets"] += 1
        back = sas.setdefault(reply_spi(spi), security_association(reply_spi(spi)))
        reply = back.encrypt(IP(src=ip.dst, dst=ip.src) / UDP(sport=4242, dport=4242) / Raw(b"echo:" + tag.encode()))
        send.sendto(bytes(reply), (ip.src, 0))
    print(json.dumps({"sas": answered, "sources": sorted(sources), "bad": bad}), flush=True)


def client(me, peer, spi, tag):
    receive, send = sockets(0.3)
    out, back = security_association(spi), security_association(reply_spi(spi))
    replies, foreign, bad, sent = [], 0, 0, 0
    deadline = time.time() + 20
    while time.time() < deadline and len(replies) <= ROUNDS:
        packet = out.encrypt(IP(src=me, dst=peer) / UDP(sport=4242, dport=4242) / Raw(tag.encode()))
        send.sendto(bytes(packet), (peer, 0))
        sent += 1
        wait_until = time.time() + 0.3
        while time.time() < wait_until:
            try:
                datagram, _ = receive.recvfrom(65535)
            except socket.timeout:
                break
            ip = IP(datagram)
            if ESP not in ip:
                continue
            if spi_of(ip) != reply_spi(spi):
                foreign += 1
                continue
            try:
                replies.append(back.decrypt(ip)[Raw].load.decode())
            except Exception:
                bad += 1
                continue
            break
    print(json.dumps({"replies": replies, "sent": sent, "foreign": foreign, "bad": bad}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(float(sys.argv[2]), int(sys.argv[3]))
    else:
        client(sys.argv[2], sys.argv[3], int(sys.argv[4], 0), sys.argv[5])
