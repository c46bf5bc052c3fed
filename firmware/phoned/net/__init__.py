"""The phone's network beyond SIP (SPEC §2 steps 1 and 3, §6): VPN, routes and Phone Apps.

Owns: `vpn` (WireGuard, kernel or wireguard-go) and `vpn_inputs` (its key file and
endpoints), with `wireguard_go` the only importers of wireguard_tools; `routes` (the only
importer of pyroute2; only routes marked as ours) and
`apps` (which URL each Phone App has on the server in use, and fetching it), `linkwatch`
(the phone's own link and addresses, from a plain netlink socket).
Must not touch: SIP, probing, decisions; and never a route or interface it did not create.
"""
