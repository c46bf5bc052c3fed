"""The lab: real SIP peers (Kamailio, sipp) on loopback or in network namespaces (SPEC §8).

Owns: test and demo tooling only. `phoned demo`, `scripts/bench-failover` and the
integration tests use it; the service itself never imports it (it shells out to `ip`,
`nft`, `kamailio`, `sipp` and `tcpdump`, which the service must never do).
Modules: `netns` (namespaces, processes), `kamailio` (lab PBX), `faults` (blackhole,
stop, freeze), `sipp` (late or failing responder), `capture` (tcpdump) and `pcap`
(pure pcap reader and SIP summaries).
"""
