"""Kamailio 5.6 config text for the lab PBX: base registrar plus real-PBX features (SPEC §8).

Owns: rendering the config (pure text), the db_text tables it reads (users for digest
auth, presence tables copied from the package) and the TLS module's config file.
Must not touch: processes (that is `phonelab.kamailio`) and any file outside the
directories it is handed.

Routing rules of the rendered PBX, in order:
1. Every request is logged `REQ <method> from <ip>:<port> <call-id>` (`requests()` reads it).
2. In-dialog requests (To tag) that carry our Route are relayed (`loose_route`), so a call's
   BYE passes through the PBX that record-routed it, wherever the phone is registered now.
3. With `users`, out-of-dialog REGISTER gets 401, INVITE/SUBSCRIBE/PUBLISH/MESSAGE get 407
   unless they come from the PBX host itself or a `trusted` address; wrong password or
   unknown user -> 403 Forbidden (one answer, nothing to retry).
4. Per method: OPTIONS 200, REGISTER saved in memory, PUBLISH/SUBSCRIBE to presence (with
   `presence`), INVITE to a `routes` entry or a registered contact, anything else 404.
5. Requests Kamailio originates itself never pass request_route. The check-sync NOTIFY
   `KamailioPbx.send_check_sync` has tm send (Call-ID `lab-check-sync.<ms>.<id>`) is logged
   `CHECK-SYNC <ruri> <call-id>` and gets `<ms>` to be answered (`t_set_fr` in
   `event_route[tm:local-request]`); tm's own 408 ends it after that.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from phonelab.tls import TlsFiles

BASE_MODULES = (
    "tm", "sl", "tmx", "pv", "maxfwd", "textops", "siputils", "sanity", "xlog",
    "usrloc", "registrar", "ctl", "rr",
)  # fmt: skip
DBTEXT_SHIPPED = Path("/usr/share/kamailio/dbtext/kamailio")
PRESENCE_TABLES = ("version", "presentity", "active_watchers", "watchers", "xcap", "pua")
TLS_PORT = 5061
#: First dot-separated field of the Call-ID of the lab's check-sync NOTIFYs (rule 5).
CHECK_SYNC_CALL_ID = "lab-check-sync"
_LOCAL_REQUEST_ROUTE = f"""event_route[tm:local-request] {{
    if (is_method("NOTIFY") && $(ci{{s.select,0,.}}) == "{CHECK_SYNC_CALL_ID}") {{
        $var(fr) = $(ci{{s.select,1,.}}{{s.int}});
        xlog("L_NOTICE", "CHECK-SYNC $ru $ci\\n");
        t_set_fr($var(fr), $var(fr));
    }}
}}"""


@dataclass(frozen=True)
class ConfigExtensions:
    """Where later features plug into the lab config (presence, auth...)."""

    #: Extra module names to load after the base ones (e.g. "db_text", "presence").
    modules: tuple[str, ...] = ()
    #: Extra raw config lines after the base modparams (e.g. `modparam("presence", ...)`).
    modparams: tuple[str, ...] = ()
    #: Raw route statements run first for every request, after the xlog line (e.g. auth).
    preamble: str = ""
    #: Route body per SIP method, replacing the default (e.g. SUBSCRIBE -> handle_subscribe).
    method_routes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PbxFeatures:
    """What makes the lab PBX behave like a real one (all off: the issue-2 registrar)."""

    #: username -> password; set: digest auth (realm = the PBX host).
    users: Mapping[str, str] | None = None
    #: Source IPs never challenged (call peers); the PBX host itself always is.
    trusted: tuple[str, ...] = ()
    #: SUBSCRIBE/PUBLISH for `Event: presence` and `Event: dialog` (RFC 4235).
    presence: bool = False
    #: extension -> SIP URI: INVITEs to that extension are relayed there.
    routes: Mapping[str, str] = field(default_factory=dict)
    #: Record-Route INVITEs so in-dialog requests pass through this PBX.
    record_route: bool = True
    #: Also listen on TCP `port`.
    tcp: bool = False
    #: Also listen on TCP `port` and TLS 5061 with these files.
    tls: TlsFiles | None = None


_DEFAULT_ROUTES = {
    "OPTIONS": 'sl_send_reply("200", "OK");',
    "REGISTER": 'if (!save("location")) {\n            sl_reply_error();\n        }',
    "ACK": "if (t_check_trans()) {\n            t_relay();\n        }",
    "CANCEL": "if (t_check_trans()) {\n            t_relay();\n        }",
}
_PRESENCE_ROUTE = """if (!t_newtran()) {
            sl_reply_error();
            exit;
        }
        if (is_method("PUBLISH")) {
            handle_publish();
        } else {
            handle_subscribe();
        }
        t_release();"""
_IN_DIALOG = """    if (has_totag()) {
        if (loose_route()) {
            if (!t_relay()) {
                sl_reply_error();
            }
            exit;
        }
        if (!is_method("ACK|SUBSCRIBE|NOTIFY|OPTIONS|REGISTER|PUBLISH")) {
            sl_send_reply("481", "Call/Transaction Does Not Exist");
            exit;
        }
    }"""


def _invite_route(features: PbxFeatures) -> str:
    parts = ["record_route();"] if features.record_route else []
    for ext, uri in features.routes.items():
        parts.append(f'if ($rU == "{ext}") {{ $du = "{uri}"; t_relay(); exit; }}')
    parts.append('if (!lookup("location")) { sl_send_reply("404", "Not Found"); exit; }')
    parts.append("if (!t_relay()) { sl_reply_error(); }")
    return "\n        ".join(parts)


def _auth_route(host: str, features: PbxFeatures) -> str:
    if features.users is None:
        return ""
    trusted = " || ".join(f'$si == "{ip}"' for ip in (host, *features.trusted))
    return f"""    if (!({trusted})) {{
        if (is_method("REGISTER")) {{
            $var(rc) = www_authorize("{host}", "subscriber");
            xlog("L_NOTICE", "AUTH $rm $fU rc=$var(rc)\\n");
            if ($var(rc) == -2 || $var(rc) == -3) {{
                sl_send_reply("403", "Forbidden");
                exit;
            }}
            if ($var(rc) < 0) {{
                www_challenge("{host}", "0");
                exit;
            }}
            consume_credentials();
        }} else if (is_method("INVITE|SUBSCRIBE|PUBLISH|MESSAGE") && !has_totag()) {{
            $var(rc) = proxy_authorize("{host}", "subscriber");
            xlog("L_NOTICE", "AUTH $rm $fU rc=$var(rc)\\n");
            if ($var(rc) == -2 || $var(rc) == -3) {{
                sl_send_reply("403", "Forbidden");
                exit;
            }}
            if ($var(rc) < 0) {{
                proxy_challenge("{host}", "0");
                exit;
            }}
            consume_credentials();
        }}
    }}"""


def _listen(host: str, port: int, features: PbxFeatures) -> str:
    lines = [f"listen=udp:{host}:{port}"]
    if features.tcp or features.tls:
        lines.append(f"listen=tcp:{host}:{port}")
    if features.tls:
        lines += [f"listen=tls:{host}:{TLS_PORT}", "enable_tls=yes"]
    lines.append("disable_tcp=no" if len(lines) > 1 else "disable_tcp=yes")
    return "\n".join(lines)


def feature_extensions(
    host: str, port: int, features: PbxFeatures, dbdir: Path, tls_cfg: Path | None
) -> ConfigExtensions:
    """The modules, modparams and routes `features` add to the base config."""
    db_url = f"text://{dbdir}"
    modules: list[str] = []
    params: list[str] = []
    routes: dict[str, str] = {"INVITE": _invite_route(features)}
    if features.users is not None or features.presence:
        modules.append("db_text")
    if features.users is not None:
        modules += ["auth", "auth_db"]
        params += [f'modparam("auth_db", "db_url", "{db_url}")',
                   'modparam("auth_db", "calculate_ha1", yes)',
                   'modparam("auth_db", "password_column", "password")']  # fmt: skip
    if features.presence:
        modules += ["presence", "presence_xml", "presence_dialoginfo"]
        params += [f'modparam("presence", "db_url", "{db_url}")',
                   f'modparam("presence", "server_address", "sip:{host}:{port}")',
                   f'modparam("presence_xml", "db_url", "{db_url}")',
                   'modparam("presence", "subs_db_mode", 0)',
                   'modparam("presence_xml", "force_active", 1)']  # fmt: skip
        routes["PUBLISH"] = routes["SUBSCRIBE"] = _PRESENCE_ROUTE
    if features.tcp or features.tls:
        modules.append("nathelper")
        params.append('modparam("nathelper", "received_avp", "$avp(RECEIVED)")')
        params.append('modparam("registrar", "received_avp", "$avp(RECEIVED)")')
        routes["REGISTER"] = "if (proto != UDP) {\n            fix_nated_register();\n        }\n"
        routes["REGISTER"] += "        " + _DEFAULT_ROUTES["REGISTER"]
    if features.tls and tls_cfg is not None:
        modules.append("tls")
        params.append(f'modparam("tls", "config", "{tls_cfg}")')
    return ConfigExtensions(tuple(modules), tuple(params), method_routes=routes)


def render_config(
    host: str,
    port: int,
    ctl_socket: Path,
    extensions: ConfigExtensions | None = None,
    *,
    features: PbxFeatures | None = None,
    dbdir: Path | None = None,
    tls_cfg: Path | None = None,
) -> str:
    """The Kamailio config text for a lab PBX on UDP `host:port` (rules: module docstring).

    `extensions` are applied after `features`: their method routes win, their preamble
    runs before the in-dialog and auth steps.
    """
    feats = features or PbxFeatures()
    fext = feature_extensions(host, port, feats, dbdir or Path("/nonexistent"), tls_cfg)
    ext = extensions or ConfigExtensions()
    modules = "\n".join(
        f'loadmodule "{m}.so"' for m in dict.fromkeys((*BASE_MODULES, *fext.modules, *ext.modules))
    )
    routes = {**_DEFAULT_ROUTES, **fext.method_routes, **ext.method_routes}
    by_method = "\n".join(
        f'    if (is_method("{method}")) {{\n        {body}\n        exit;\n    }}'
        for method, body in routes.items()
    )
    return f"""#!KAMAILIO
# phoned lab PBX (generated by phonelab.kamailio_cfg.render_config)
debug=2
log_stderror=yes
children=2
tcp_children=2
auto_aliases=no
mhomed=0
dns=no
rev_dns=no
dns_try_ipv6=no
use_dns_cache=off
disable_sctp=yes
{_listen(host, port, feats)}
alias="{host}:{port}"

{modules}

modparam("usrloc", "db_mode", 0)
modparam("ctl", "binrpc", "unix:{ctl_socket}")
modparam("rr", "enable_full_lr", 1)
{chr(10).join((*fext.modparams, *ext.modparams))}

request_route {{
    xlog("L_NOTICE", "REQ $rm from $si:$sp $ci\\n");
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
{ext.preamble}
{_IN_DIALOG}
{_auth_route(host, feats)}
{by_method}
    sl_send_reply("404", "Not Found");
    exit;
}}

{_LOCAL_REQUEST_ROUTE}
"""


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _dbtext_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("\n", "\\n")


def write_db(dbdir: Path, host: str, users: Mapping[str, str] | None, presence: bool) -> None:
    """Create the db_text directory: presence tables (empty) and the subscriber table."""
    dbdir.mkdir(parents=True, exist_ok=True)
    tables = [*PRESENCE_TABLES] if presence else ["version"]
    for table in tables:
        shutil.copyfile(DBTEXT_SHIPPED / table, dbdir / table)
    if users is not None:
        header = (DBTEXT_SHIPPED / "subscriber").read_text().splitlines()[0]
        rows = [
            f"{i}:{_dbtext_escape(user)}:{host}:{_dbtext_escape(password)}:"
            f"{_md5(f'{user}:{host}:{password}')}:{_md5(f'{user}@{host}:{host}:{password}')}"
            for i, (user, password) in enumerate(sorted(users.items()), start=1)
        ]
        (dbdir / "subscriber").write_text("\n".join([header, *rows]) + "\n")
        (dbdir / "subscriber").chmod(0o600)


def render_tls_cfg(files: TlsFiles) -> str:
    """The tls module's config: serve `files`, do not ask clients for certificates."""
    return f"""[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
private_key = {files.key}
certificate = {files.cert}
ca_list = {files.ca}

[client:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
"""
