"""The prober (SPEC §1): OPTIONS out, replies in, on sockets of its own.

Owns: `sipmsg` (OPTIONS bytes, response parsing and stream framing: pure, bounded),
`udp` (one UDP socket per server, ICMP errors through IP_RECVERR), `arrival` (the kernel's
receive timestamps), `matching` (replies to attempts), `connection` and `stream` (TCP/TLS
without blocking), `resolve` and `lookup` (names resolved before each cycle, off the
monitor thread; the only importers of dnspython). It turns the wire into `core.events`
and nothing else.
Must not touch: pjsua2, the core's decisions, the status board.
"""
