"""The settings of phoned as frozen data (SPEC §3, §6, §7): one dataclass per TOML table.

Owns: the shape, defaults and meaning of every setting. Must not touch: files, parsing or
validation (that is `phoned.config.loader`, which re-exports everything here; import from there).
Every instance handed out by `phoned.config.loader` has passed its checks, so users need not
re-check values. Rule: a password (SIP or provisioning) never shows in a `repr` or in
`redacted()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from phoned import __version__

#: Stand-in for a password in `Settings.redacted()` (and in `phoned.config.changes`).
REDACTED = "***"


@dataclass(frozen=True, slots=True)
class AccountSettings:
    """`[account]`: who the phone registers as."""

    #: SIP user part of the AOR (the extension), required.
    username: str
    #: SIP password; read from `password_file` when that is given. Never printed.
    password: str = field(repr=False)
    #: Absolute path of a secret file (regular, not a symlink, mode 0600, owned by the
    #: service's user or root) holding the password; "" when not used.
    password_file: str = ""
    #: Digest user name; defaults to `username`.
    auth_username: str = ""
    #: Display name in From headers; "" for none.
    display_name: str = ""
    #: SIP domain of the AOR. "" (the default) = the address of the server in use, so that
    #: on the backup the AOR, BLF and calls name the backup (SPEC §2).
    domain: str = ""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """`[server]`: the primary PBX."""

    #: IP literal or host name (FQDN), required.
    address: str
    #: SIP port; 0 means "look up DNS SRV".
    port: int = 5060
    #: "udp", "tcp" or "tls", for both servers and the probes.
    transport: str = "udp"
    #: Absolute path of the CA bundle server certificates must chain to; "" for none.
    tls_ca_file: str = ""


@dataclass(frozen=True, slots=True)
class RedundancySettings:
    """`[redundancy]`: the endpoint manager's Redundancy tab (SPEC §1, §3)."""

    #: Whether a backup PBX is used at all.
    backup_destination: bool = False
    #: IP literal or host name of the backup PBX; "" when none.
    backup_destination_address: str = ""
    #: SIP port of the backup PBX.
    backup_destination_port: int = 5060
    #: Outbound proxy towards the primary; "" to send directly.
    outbound_proxy: str = ""
    #: Port of `outbound_proxy`.
    outbound_proxy_port: int = 5060
    #: Outbound proxy towards the backup; "" to send directly.
    backup_outbound_proxy: str = ""
    #: Port of `backup_outbound_proxy`.
    backup_outbound_proxy_port: int = 5060
    #: Whether OPTIONS probes run; False leaves failover to REGISTER failures.
    sip_keep_alive_mode: bool = True
    #: Seconds between the starts of two probe cycles, 1..3600.
    sip_keep_alive_interval: int = 15
    #: Consecutive cycles the primary must be up before failback, 1..100.
    failback_cycles: int = 1


@dataclass(frozen=True, slots=True)
class SipSettings:
    """`[sip]`: the phone's own SIP endpoint."""

    #: Local SIP port, 1..65535.
    local_port: int = 5060
    #: Seconds asked for in REGISTER Expires, 30..86400.
    register_expires: int = 300
    #: User-Agent header value.
    user_agent: str = f"phoned/{__version__}"
    #: Answer incoming calls from the configured servers at once (beyond SPEC §3: the lab
    #: and intercom set-ups); false = they ring until answered.
    auto_answer: bool = False


@dataclass(frozen=True, slots=True)
class BlfSettings:
    """`[blf]`: the extensions whose line state the BLF keys show."""

    #: Extensions watched, in key order, e.g. ("1002", "1003").
    keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AppLink:
    """One entry of `[apps]`: a Phone App served by the PBX (SPEC §2 step 3)."""

    #: The TOML key, used by `phoned app NAME`.
    name: str
    #: http(s) URL of the app on the primary.
    url: str
    #: Explicit URL on the backup; "" to derive it from `url` with the backup's host.
    backup_url: str = ""


@dataclass(frozen=True, slots=True)
class VpnPeer:
    """`[vpn.primary]` or `[vpn.backup]`: one PBX's WireGuard peer (SPEC §6)."""

    #: "host:port" of the peer (IPv6 as "[addr]:port").
    endpoint: str
    #: The peer's public key, base64 of 32 bytes.
    public_key: str
    #: Networks reached through this peer, CIDR text normalised ("198.18.1.0/24").
    allowed_ips: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class VpnSettings:
    """`[vpn]` (SPEC §6). When `enabled` is False the other keys are not checked."""

    #: Whether the service brings up the tunnel.
    enabled: bool = False
    #: Name of the WireGuard interface the service creates (at most 15 characters).
    interface: str = "wg-phoned"
    #: Absolute path of the private key file (a secret file, as `password_file`).
    private_key_file: str = ""
    #: The phone's tunnel address with prefix length, e.g. "198.18.0.2/32".
    address: str = ""
    #: PBX-side networks that follow the active server, normalised CIDR text.
    routes: tuple[str, ...] = ()
    #: The primary PBX's peer; required when enabled.
    primary: VpnPeer | None = None
    #: The backup PBX's peer; None when the backup is reached without the VPN.
    backup: VpnPeer | None = None


@dataclass(frozen=True, slots=True)
class ProvisioningSettings:
    """`[provisioning]` (SPEC §7): where the phone fetches its file, and how often."""

    #: Base http(s) URL where `<mac>.toml` waits; "" for the local file only.
    url: str = ""
    #: Seconds between checks for a new file, 0 or 60..604800; 0 = at boot and on
    #: check-sync only.
    resync_interval: int = 0
    #: Absolute path of the CA bundle an https `url` must chain to; "" = the system's.
    tls_ca_file: str = ""
    #: HTTP auth (basic or digest) user name for the provisioning server; "" for none.
    username: str = ""
    #: Absolute path of a secret file (as `AccountSettings.password_file`) holding the HTTP
    #: auth password; "" for none.
    #: Given together with `username`, or not at all.
    password_file: str = ""
    #: The HTTP auth password read from `password_file` ("" when none). Never printed.
    password: str = field(default="", repr=False)
    #: Interface whose MAC names the file (`<mac>.toml`); "" = the first non-loopback one.
    mac_interface: str = ""
    #: Whether a SIP NOTIFY `Event: check-sync` from the servers fetches and applies the file.
    check_sync: bool = True


@dataclass(frozen=True, slots=True)
class BoardSettings:
    """`[board]`: which hardware profile drives LEDs and display (SPEC §5)."""

    #: "emulated" or the name of a profile under board/profiles/.
    profile: str = "emulated"


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """`[service]`: where the running service keeps its socket and state."""

    #: Absolute path of the control socket `phoned status` talks to.
    control_socket: str = "/run/phoned/control.sock"
    #: Absolute path of the directory for persistent state.
    state_dir: str = "/var/lib/phoned"


@dataclass(frozen=True, slots=True)
class Settings:
    """One whole, valid settings file (SPEC §3)."""

    #: `[account]`.
    account: AccountSettings
    #: `[server]`: the primary PBX.
    server: ServerSettings
    #: `[redundancy]`.
    redundancy: RedundancySettings = field(default_factory=RedundancySettings)
    #: `[sip]`.
    sip: SipSettings = field(default_factory=SipSettings)
    #: `[blf]`.
    blf: BlfSettings = field(default_factory=BlfSettings)
    #: `[apps]`, in file order.
    apps: tuple[AppLink, ...] = ()
    #: `[vpn]`.
    vpn: VpnSettings = field(default_factory=VpnSettings)
    #: `[provisioning]`.
    provisioning: ProvisioningSettings = field(default_factory=ProvisioningSettings)
    #: `[board]`.
    board: BoardSettings = field(default_factory=BoardSettings)
    #: `[service]`.
    service: ServiceSettings = field(default_factory=ServiceSettings)
    #: Where these settings came from (a path, or a name like "<provisioning>").
    source: str = ""

    @property
    def backup_enabled(self) -> bool:
        """True when a backup PBX is configured and switched on (SPEC §1)."""
        red = self.redundancy
        return red.backup_destination and bool(red.backup_destination_address)

    def redacted(self) -> dict[str, Any]:
        """These settings as a JSON-able dict, the passwords replaced by "***".

        Returns:
            One dict per table (lists for `apps` and arrays), `source` as a string.
        """
        plain: dict[str, Any] = {f.name: _plain(getattr(self, f.name)) for f in fields(self)}
        plain["account"]["password"] = REDACTED
        plain["provisioning"]["password"] = REDACTED
        return plain


def _plain(value: object) -> object:
    """Dataclasses to dicts and tuples to lists, recursively (JSON-able)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value
