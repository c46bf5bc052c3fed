"""phonelab: the lab beside the product, real SIP peers in network namespaces (SPEC §8).

Owns: test and demo tooling only. It is a package of its own, installed by the development
set-up (`make deps`) and never by `scripts/build-image`. `phoned demo` (`demo`),
`scripts/bench-failover` and the integration tests use it; the service itself never
imports it (it shells out to `ip`, `nft`, `kamailio`, `sipp`, `nginx` and `tcpdump`, which the
service must never do).
Modules: `netns` (namespaces and their addresses), `procs` (processes by PID), `kamailio`
and `kamailio_cfg` (lab PBX: registrar, digest auth, presence, call routes, TCP/TLS),
`proxy` (outbound proxy), `faults` (blackhole, stop, freeze), `sipp` (late or failing
responder), `calls` (sipp call peers), `tls` (a lab CA), `dns` (dnsmasq), `sipreq` (SIP a
test sends by hand), `capture` (tcpdump), `pcap` (pure pcap reader and SIP summaries),
`timing`, `stream_timing` and `benchreport` (benchmark arithmetic and report), `phone`
(the phone under test), `follow` (traffic that shows a switch), `nginx` (the provisioning
server), `webfetch` (HTTP(S) GETs from a namespace), `kamctl` (kamcmd RPCs: contacts,
the check-sync NOTIFY), `fleet_sim`, `fleet_lab` and `fleetreport` (`scripts/sim-fleet`:
many phones simulated and real), `phoneproc` (a quiet long-running phone), `pbxpair` (a
lab with both PBXs, for the long runs), `soak` and `soakreport` (`scripts/soak`),
`fuzz_targets` and `fuzz_run` (`scripts/fuzz`), `flood` (junk at every port a phone has
open) and `errors` (`LabError`).
"""
