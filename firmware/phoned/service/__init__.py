"""The shell (SPEC §4): wiring, threads, the §2 switch, the control socket, systemd.

Owns: `ports` (the Protocols adapters stand behind), `wiring` (the one place that builds
every component from `Settings` and hands new settings on), `supervisor` (the pjsua2
thread's loop, signals, shut-down order), `switch` (SPEC §2's steps in order), `monitor`
(the keep-alive thread driving the core), `watchdog` (heartbeats -> WATCHDOG=1),
`commands` (control requests validated and run), `control` (the socket) with
`control_socket_file` (its file, mode, group), `control_wire` (request and reply lines)
and `control_client` (the CLI's side), `status` (the status board and SPEC §5's rules),
`journal` (every log line's wording, the repeat limit), `targets` (where each server is
reached), `resume` (the server in use, kept across a restart) and `sdnotify`.
Must not touch: decisions (the core's) or any hardware or network library directly: those
live in their own subpackages behind ports.
"""
