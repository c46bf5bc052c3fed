"""The lab's endpoint-manager side: nginx as the provisioning server in the prov namespace,
fetched from the phone's, and Kamailio's Force Update (a check-sync NOTIFY) to a contact a
hand-made REGISTER created (SPEC §7, §8).
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import urllib.error
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeProv

from phonelab.errors import LabError
from phonelab.kamailio import KamailioPbx
from phonelab.netns import PBX1_IP, PHONE_IP, PROV_IP, Lab
from phonelab.nginx import NginxServer
from phonelab.sipreq import register_request, reply_for, response_status, split_message
from phonelab.tls import CertAuthority
from phonelab.webfetch import HttpReply, http_get

MakePbx = Callable[..., KamailioPbx]
PhoneUdp = Callable[[str, int], socket.socket]
MAC_FILE = "b827eb12ab34.toml"


@pytest.fixture
def check_sync_pool() -> Iterator[ThreadPoolExecutor]:
    """A thread for `send_check_sync`, which blocks until the phone (the test) answers."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def get(lab: Lab, url: str, **kw: Any) -> HttpReply:
    """GET `url` from the phone's namespace."""
    return http_get(lab.phone, url, **kw)


# ------------------------------------------------------------------ provisioning server


def test_prov_host_has_its_address_on_the_lab_bridge(lab: Lab) -> None:
    addrs = lab.run("prov", ["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
    assert f"{PROV_IP}/24" in addrs
    assert lab.prov in lab.namespaces


def test_published_file_has_an_etag_and_a_matching_conditional_get_gets_304(
    lab: Lab, make_prov: MakeProv
) -> None:
    prov = make_prov()
    etag = prov.publish(MAC_FILE, '[account]\nusername = "1001"\n')
    url = f"{prov.url()}/{MAC_FILE}"

    first = get(lab, url)
    assert (first.status, first.headers["etag"]) == (200, etag)
    assert first.body == b'[account]\nusername = "1001"\n'
    not_modified = get(lab, url, headers={"If-None-Match": etag})
    assert (not_modified.status, not_modified.body) == (304, b"")
    since = {"If-Modified-Since": first.headers["last-modified"]}
    assert get(lab, url, headers=since).status == 304

    newer = prov.publish(MAC_FILE, '[account]\nusername = "1002"\n')  # same size, same second
    assert newer != etag
    changed = get(lab, url, headers={"If-None-Match": etag})
    assert (changed.status, changed.headers["etag"]) == (200, newer)
    assert changed.body.endswith(b'"1002"\n')
    assert get(lab, url, headers=since).status == 200

    prov.remove(MAC_FILE)
    assert get(lab, url).status == 404
    assert prov.requests() == [
        f"GET /{MAC_FILE} 200 http inm=no",
        f"GET /{MAC_FILE} 304 http inm=yes",
        f"GET /{MAC_FILE} 304 http inm=no",
        f"GET /{MAC_FILE} 200 http inm=yes",
        f"GET /{MAC_FILE} 200 http inm=no",
        f"GET /{MAC_FILE} 404 http inm=no",
    ]
    assert [h.if_none_match for h in prov.hits()][1] == etag
    assert prov.hits()[2].if_modified_since == first.headers["last-modified"]


def test_https_is_verified_with_the_lab_ca_and_refused_with_another_ca(
    lab: Lab, make_prov: MakeProv, lab_ca: CertAuthority, tmp_path: Path
) -> None:
    prov = make_prov(tls=lab_ca.issue("prov", [PROV_IP]))
    prov.publish(MAC_FILE, "[redundancy]\n")
    url = f"{prov.url('https')}/{MAC_FILE}"

    reply = get(lab, url, cafile=lab_ca.cert)
    assert (reply.status, reply.body) == (200, b"[redundancy]\n")
    assert url.startswith(f"https://{PROV_IP}/")
    other = CertAuthority.create(tmp_path / "other-ca", "other-ca")
    with pytest.raises(urllib.error.URLError) as refused:
        get(lab, url, cafile=other.cert)
    assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)
    assert get(lab, f"{prov.url()}/{MAC_FILE}").status == 200  # plain HTTP still there
    assert prov.requests() == [
        f"GET /{MAC_FILE} 200 https inm=no",
        f"GET /{MAC_FILE} 200 http inm=no",
    ]


def test_basic_auth_location_wants_the_right_credentials(lab: Lab, make_prov: MakeProv) -> None:
    prov = make_prov(users={"phone": "prov-pw"}, auth_location="/secure/")
    prov.publish(f"secure/{MAC_FILE}", "[account]\n")
    prov.publish("open.toml", "[blf]\n")
    url = f"{prov.url()}/secure/{MAC_FILE}"

    anonymous = get(lab, url)
    assert anonymous.status == 401
    assert anonymous.headers["www-authenticate"].startswith("Basic ")
    assert get(lab, url, auth=("phone", "wrong")).status == 401
    granted = get(lab, url, auth=("phone", "prov-pw"))
    assert (granted.status, granted.body) == (200, b"[account]\n")
    assert get(lab, f"{prov.url()}/open.toml").status == 200
    assert [(h.status, h.user) for h in prov.hits()] == [
        (401, None), (401, "phone"), (200, "phone"), (200, None),
    ]  # fmt: skip


def test_publish_replaces_atomically_and_refuses_names_outside_the_root(
    lab: Lab, make_prov: MakeProv
) -> None:
    prov = make_prov()
    versions = [b"a" * 300_000, b"b" * 200_000]
    prov.publish(MAC_FILE, versions[0])
    done = threading.Event()

    def republish() -> None:
        for i in range(60):
            prov.publish(MAC_FILE, versions[i % 2])
        done.set()

    writer = threading.Thread(target=republish)
    writer.start()
    bodies = []
    while not done.is_set():
        bodies.append(get(lab, f"{prov.url()}/{MAC_FILE}").body)
    writer.join(timeout=10)
    assert bodies
    assert all(body in versions for body in bodies)  # never half of one
    assert sorted(p.name for p in prov.root.iterdir()) == [MAC_FILE]  # no temp file left
    for bad in ("../escape.toml", "/etc/passwd", ".hidden", "a/../../b", ""):
        with pytest.raises(LabError):
            prov.publish(bad, "x")


def test_second_server_on_the_same_address_is_refused(
    lab: Lab, make_prov: MakeProv, tmp_path: Path
) -> None:
    first = make_prov()
    with pytest.raises(LabError, match="already answers"):
        NginxServer(lab.prov, PROV_IP, workdir=tmp_path / "second").start()
    assert first.running


# ------------------------------------------------------------------ check-sync from the PBX


def register(sock: socket.socket, user: str = "1001") -> None:
    """REGISTER `user` at pbx1 (no auth configured) from `sock`; expect 200."""
    call_id = uuid.uuid4().hex
    sock.send(register_request(PBX1_IP, user, sock.getsockname(), call_id=call_id))
    sock.settimeout(2.0)
    assert response_status(sock.recv(65535)) == 200


def next_notify(sock: socket.socket, timeout_s: float = 3.0) -> bytes:
    """The next datagram, which must be a NOTIFY."""
    sock.settimeout(timeout_s)
    data = sock.recv(65535)
    assert data.startswith(b"NOTIFY "), data[:80]
    return data


def test_check_sync_reaches_the_registered_phone_and_returns_its_200(
    make_pbx: MakePbx, phone_udp: PhoneUdp, check_sync_pool: ThreadPoolExecutor
) -> None:
    pbx = make_pbx("pbx1")
    sock = phone_udp(PBX1_IP, 5060)  # connected: only datagrams from 192.0.2.11:5060 arrive
    register(sock)
    port = sock.getsockname()[1]

    result: Future[int] = check_sync_pool.submit(pbx.send_check_sync, "1001")
    notify = next_notify(sock)
    start, headers, body = split_message(notify)
    sock.send(reply_for(notify, 200, "OK"))

    assert result.result(timeout=5) == 200
    assert start == f"NOTIFY sip:1001@{PHONE_IP}:{port} SIP/2.0"
    assert headers["event"] == "check-sync"
    assert headers["subscription-state"] == "terminated"
    assert headers["content-length"] == "0"
    assert body == ""
    assert f"sip:pbx@{PBX1_IP}:5060" in headers["from"]
    assert ";tag=" in headers["from"]
    assert f"<sip:1001@{PBX1_IP}>" in headers["to"]
    assert re.match(rf"SIP/2\.0/UDP {re.escape(PBX1_IP)}(:5060)?;", headers["via"])
    # Originated by tm: it never ran the PBX's own request routes.
    assert [r.split()[0] for r in pbx.requests()] == ["REGISTER"]


def test_check_sync_reboot_flag_and_a_refusal_are_passed_through(
    make_pbx: MakePbx, phone_udp: PhoneUdp, check_sync_pool: ThreadPoolExecutor
) -> None:
    pbx = make_pbx("pbx1")
    sock = phone_udp(PBX1_IP, 5060)
    register(sock)

    result: Future[int] = check_sync_pool.submit(pbx.send_check_sync, "1001", reboot=True)
    notify = next_notify(sock)
    sock.send(reply_for(notify, 403, "Forbidden"))

    assert result.result(timeout=5) == 403
    assert split_message(notify)[1]["event"] == "check-sync;reboot=true"


def test_check_sync_to_a_silent_phone_ends_with_408_after_its_timeout(
    make_pbx: MakePbx, phone_udp: PhoneUdp, check_sync_pool: ThreadPoolExecutor
) -> None:
    pbx = make_pbx("pbx1")
    sock = phone_udp(PBX1_IP, 5060)
    register(sock)

    result: Future[int] = check_sync_pool.submit(pbx.send_check_sync, "1001", timeout_s=1.2)
    first, again = next_notify(sock), next_notify(sock)  # T1 = 500 ms: retransmitted
    assert result.result(timeout=5) == 408
    assert split_message(first)[1]["call-id"] == split_message(again)[1]["call-id"]
    assert pbx.registrations() == [f"sip:1001@{PHONE_IP}:{sock.getsockname()[1]}"]


def test_check_sync_to_an_unregistered_extension_is_an_error(make_pbx: MakePbx) -> None:
    pbx = make_pbx("pbx1")
    with pytest.raises(LabError, match="1002 is not registered"):
        pbx.send_check_sync("1002")
