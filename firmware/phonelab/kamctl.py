"""Talking to a lab Kamailio through its `ctl` socket with `kamcmd` (SPEC §8).

Owns: the argv of one `kamcmd` call, running it with a deadline, and reading what it
prints: the contacts of `ul.dump` and the final response of
`tm.t_uac_wait_block`. Every parameter is sent as a string (`s:` prefix): kamcmd would
otherwise send "1001" as an integer, and RPCs that expect a string refuse it.
Must not touch: Kamailio's process and config (`phonelab.kamailio` owns those).

RPCs used (Kamailio 5.6, names from `system.listMethods` on a lab PBX):
- `ul.dump`: every AOR (`AoR: 1001`) and its contacts. Each contact prints `Address:`,
  `Received:` (`[not set]` unless a NAT fix-up stored one) and `Last-Modified:` (epoch s).
  (`ul.lookup <table> <aor>` prints one AOR the same way, but faults with `500 - AOR not
  found in location table` for an unknown one: one `ul.dump` serves both questions.)
- `tm.t_uac_wait_block <method> <ruri> <next hop> <socket> <headers> [<body>]`: Kamailio's
  tm originates the request (its own Via, CSeq and Content-Length; From tag generated),
  the RPC blocks until the final response and prints `{ code: <n> text: <reason> }`.
  A transaction that times out answers tm's own `408`. `.` stands for "none" in next hop
  and socket. Give the body even when empty (`""`): left out, 5.6 over binrpc faults
  `400 - Content-Type missing`. `tm.t_uac_wait` exists too but refuses binrpc (`600 -
  Reply wait/async mode not supported by this rpc transport`): ctl has no delayed replies,
  hence `_block`. It polls for the answer every 100 ms, and while it blocks the ctl
  process answers nothing else (other kamcmd calls queue behind it).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from phonelab.errors import LabError

__all__ = ["UacReply", "UlContact", "kamcmd", "parse_contacts", "parse_uac_reply"]

_FIELD = re.compile(r"^\s*([A-Za-z-]+):\s*(.*?)\s*$")
_CODE = re.compile(r"^\s*code:\s*(\d{3})\s*$", re.MULTILINE)
_TEXT = re.compile(r"^\s*text:\s*(.*?)\s*$", re.MULTILINE)
_NOT_SET = "[not set]"


@dataclass(frozen=True)
class UlContact:
    """One registered contact as usrloc prints it."""

    #: The address-of-record it is bound to (the extension, `1001`).
    aor: str
    #: The Contact URI the phone registered (`sip:1001@192.0.2.2:5060`).
    address: str
    #: The source the registration came from, stored by a NAT fix-up; None: not set.
    received: str | None = None
    #: When the binding was last saved, in epoch seconds (0: not printed).
    last_modified: int = 0


@dataclass(frozen=True)
class UacReply:
    """The final response a `tm.t_uac_wait_block` request got."""

    code: int
    text: str


def kamcmd(ctl_socket: Path, method: str, *params: str, timeout_s: float) -> str:
    """Run one RPC on the Kamailio listening on unix `ctl_socket`; what kamcmd printed.

    Raises:
        LabError: kamcmd timed out, failed, or printed an RPC fault (`error: ...`).
    """
    argv = ["kamcmd", "-s", f"unix:{ctl_socket}", method, *(f"s:{p}" for p in params)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"kamcmd {method}: no answer within {timeout_s} s") from exc
    fault = done.stdout.strip() if done.stdout.lstrip().startswith("error:") else ""
    if done.returncode != 0 or fault:
        raise LabError(f"kamcmd {method}: {fault or done.stderr.strip() or done.returncode}")
    return done.stdout


def parse_contacts(text: str) -> list[UlContact]:
    """The contacts in a `ul.dump` answer, in the order printed."""
    found: list[dict[str, str]] = []
    aor = ""
    for line in text.splitlines():
        match = _FIELD.match(line)
        if match is None:
            continue
        name, value = match.group(1), match.group(2)
        if name == "AoR":
            aor = value
        elif name == "Address":
            found.append({"AoR": aor, "Address": value})
        elif found and name in ("Received", "Last-Modified"):
            found[-1].setdefault(name, value)
    return [_contact(fields) for fields in found]


def _contact(fields: dict[str, str]) -> UlContact:
    received = fields.get("Received", "")
    modified = fields.get("Last-Modified", "0")
    return UlContact(
        aor=fields["AoR"],
        address=fields["Address"],
        received=None if received in ("", _NOT_SET) else received,
        last_modified=int(modified) if modified.isdigit() else 0,
    )


def parse_uac_reply(text: str) -> UacReply:
    """The `{code, text}` a `tm.t_uac_wait_block` answer prints.

    Raises:
        LabError: no status code in `text`.
    """
    code = _CODE.search(text)
    if code is None:
        raise LabError(f"kamcmd tm.t_uac_wait_block: no reply code in {text.strip()!r}")
    reason = _TEXT.search(text)
    return UacReply(int(code.group(1)), reason.group(1) if reason else "")
