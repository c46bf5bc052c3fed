"""The failover core (SPEC §1): sans-IO, time as an input.

Owns: `events` (what goes in and comes out), `cycle` (one cycle's attempts and verdicts) and
`failover` (the grid, the decision table, the server in use). It is the one source of truth
for which server is in use and why.
Must not touch: sockets, threads, clocks, sleeps, randomness, logging or any library that
does IO. It imports only the standard library's typing helpers and phoned's errors.
"""
