"""Two PBX stand-ins for scripts/test-arm64's VM: answer OPTIONS and REGISTER with 200 OK.

Runs inside the arm64 VM, which has no Kamailio: one UDP socket per address given on the
command line, port 5060. It answers what a desk phone sends a PBX (OPTIONS probes,
REGISTER, un-REGISTER) with 200 OK, without digest auth, and logs each request on a line
(`vm-pbx: 198.18.1.10 REGISTER from 198.18.1.10:5062`) so the VM's journal shows the wire.
Everything else gets 501. Tells systemd READY=1 once every socket is bound.
"""

from __future__ import annotations

import selectors
import socket
import sys

from phoned.service.sdnotify import notify

PORT = 5060
ECHOED = ("via", "from", "call-id", "cseq")


def answer(request: bytes) -> tuple[str, bytes] | None:
    """The method and the response to one SIP request, or None for a response or garbage."""
    head, _, _ = request.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("SIP/2.0"):
        return None
    method = parts[0]
    status = "200 OK" if method in ("OPTIONS", "REGISTER") else "501 Not Implemented"
    out = [f"SIP/2.0 {status}"]
    for line in lines[1:]:
        name = line.partition(":")[0].strip().lower()
        if name in ECHOED or name in ("v", "f", "i"):
            out.append(line)
        elif name in ("to", "t"):
            out.append(line if ";tag=" in line else f"{line};tag=vmpbx")
        elif name in ("contact", "m") and method == "REGISTER":
            out.append(line)
    out += ["Server: phoned-vm-pbx", "Content-Length: 0", "", ""]
    return method, "\r\n".join(out).encode()


def main(addresses: list[str]) -> int:
    selector = selectors.DefaultSelector()
    sockets: dict[int, tuple[socket.socket, str]] = {}
    for address in addresses:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, PORT))
        sockets[sock.fileno()] = (sock, address)
        selector.register(sock, selectors.EVENT_READ)
    notify("READY=1")
    print(f"vm-pbx: answering on {', '.join(addresses)} port {PORT}", flush=True)
    while True:
        for key, _ in selector.select():
            sock, address = sockets[key.fd]
            data, peer = sock.recvfrom(65535)
            reply = answer(data)
            if reply is None:
                continue
            method, response = reply
            print(f"vm-pbx: {address} {method} from {peer[0]}:{peer[1]}", flush=True)
            sock.sendto(response, peer)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
