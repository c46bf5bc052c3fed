"""The failover core (SPEC §1): sans-IO, time as an input.

Owns: `events` (what goes in and comes out), `cycle` (one cycle's attempts and verdicts),
`policy` (the settings it obeys, the snapshot it shows), `decision` (SPEC §1's table)
and `failover` (the grid, the decisions, the server in use). It is the one source of
truth for which server is in use, why, and where it answered from (`UseServer.address`).
Must not touch: sockets, threads, clocks, sleeps, randomness, logging or any library that
does IO. It imports only the standard library's typing helpers and phoned's errors.
"""
