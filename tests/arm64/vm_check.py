"""The checks scripts/test-arm64 runs inside its arm64 VM, once phoned.service is up.

Runs as root from vm-check.service, after systemd started the image's phoned.service
(Type=notify) with tests/arm64/vm-phoned.toml. Every check prints one line
`vm-check: ok|FAIL <what>` on the console; the last line is `vm-check: PASS` or
`vm-check: FAILED n of m`, which the host script reads from the serial console.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from phonelab.procs import poll_until

CONFIG = "/etc/phoned/phoned.toml"
TESTS = "/opt/phoned-tests"
PYTHON = "/opt/phoned/bin/python"
results: list[bool] = []


def run(*argv: str, timeout: float = 120, cwd: str = "/") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd
    )


def check(what: str, test: Callable[[], str | None]) -> None:
    """Run one check: `test` returns None when it holds, else what was seen instead."""
    try:
        problem = test()
    except Exception as exc:  # a crashed check is a failed check
        problem = f"{type(exc).__name__}: {exc}"
    results.append(problem is None)
    print(f"vm-check: {'ok' if problem is None else 'FAIL'} {what}", flush=True)
    if problem is not None:
        print(f"vm-check:     {problem}", flush=True)


def unit_props() -> dict[str, str]:
    out = run("systemctl", "show", "phoned.service").stdout
    return dict(line.partition("=")[::2] for line in out.splitlines())


def service_ready() -> str | None:
    props = unit_props()
    if (props.get("ActiveState"), props.get("SubState")) != ("active", "running"):
        return f"phoned.service is {props.get('ActiveState')}/{props.get('SubState')}"
    if props.get("Type") != "notify" or not props.get("StatusText"):
        return f"Type={props.get('Type')} StatusText={props.get('StatusText')!r}"
    print(f"vm-check:     systemctl status: {props['StatusText']}", flush=True)
    started = int(props["ExecMainStartTimestampMonotonic"]) / 1e6
    ready = int(props["ActiveEnterTimestampMonotonic"]) / 1e6
    print(
        f"vm-check:     phoned started {started:.1f} s after boot, READY {ready - started:.1f} s "
        "later (emulated CPU)",
        flush=True,
    )
    return None


def runs_as_phoned() -> str | None:
    pid = unit_props().get("MainPID", "0")
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    uid = fields["Uid"].split()[0]
    name = run("id", "-nu", uid).stdout.strip()
    # CAP_NET_BIND_SERVICE is bit 10, CAP_NET_ADMIN bit 12: nothing else may be effective.
    effective = int(fields["CapEff"], 16)
    if name != "phoned" or effective != (1 << 10) | (1 << 12):
        return f"main PID {pid} runs as {name} with CapEff {fields['CapEff'].strip()}"
    return None


def status_json() -> dict[str, object]:
    done = run("phoned", "status", "--json", "--config", CONFIG)
    if done.returncode != 0:
        raise RuntimeError(f"phoned status exited {done.returncode}: {done.stderr.strip()}")
    status = json.loads(done.stdout)
    assert isinstance(status, dict)
    return status


def registered_on_primary() -> str | None:
    def registered() -> dict[str, object] | None:
        status = status_json()
        on_primary = status.get("active") == "primary" and status.get("registered") is True
        return status if on_primary else None

    try:
        status = poll_until(registered, timeout_s=60, interval_s=0.5)
    except TimeoutError:
        last = status_json()
        return f"after 60 s: active={last.get('active')} registered={last.get('registered')}"
    print(f"vm-check:     display: {status.get('display')}", flush=True)
    return None


def kernel_wireguard() -> str | None:
    vpn = status_json().get("vpn")
    if not isinstance(vpn, dict) or vpn.get("backend") != "kernel":
        return f"status.vpn = {vpn}"
    shown = run("ip", "-details", "link", "show", "wg-phoned").stdout
    if "wireguard" not in shown:
        return f"ip -d link show wg-phoned: {shown.strip() or 'no such link'}"
    routes = run("ip", "route", "show", "proto", "80").stdout
    if "198.18.100.0/24 dev wg-phoned" not in routes:
        return f"phoned's routes (proto 80): {routes.strip() or 'none'}"
    return None


def check_config() -> str | None:
    good = run("phoned", "check-config", CONFIG)
    if good.returncode != 0:
        return f"check-config {CONFIG}: exit {good.returncode}: {good.stderr.strip()}"
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as bad:
        bad.write(Path(CONFIG).read_text().replace("interval = 5", "interval = 0"))
    try:
        done = run("phoned", "check-config", bad.name)
    finally:
        os.unlink(bad.name)
    message = done.stdout + done.stderr
    if done.returncode != 1 or "sip_keep_alive_interval" not in message or "Traceback" in message:
        return f"bad file: exit {done.returncode}: {message.strip()}"
    return None


def netlink_tests() -> str | None:
    pytest = (PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider")
    done = run(*pytest, "tests/contract/test_routes.py", timeout=600, cwd=TESTS)
    tail = done.stdout.strip().splitlines()[-1:] or ["no output"]
    print(f"vm-check:     test_routes.py: {tail[0]}", flush=True)
    return None if done.returncode == 0 else done.stdout[-2000:]


def main() -> int:
    check("phoned.service reached READY under systemd (Type=notify)", service_ready)
    check("it runs as user phoned with only CAP_NET_ADMIN and CAP_NET_BIND_SERVICE", runs_as_phoned)
    check("phoned status: registered on the primary", registered_on_primary)
    check("kernel WireGuard interface made through pyroute2, with its routes", kernel_wireguard)
    check("phoned check-config: 0 for a good file, 1 and a message for a bad one", check_config)
    check("tests/contract/test_routes.py against this kernel's netlink", netlink_tests)
    failed = results.count(False)
    if failed:
        print(f"vm-check: FAILED {failed} of {len(results)}", flush=True)
        print(run("journalctl", "-b", "-u", "phoned", "--no-pager", "-n", "40").stdout, flush=True)
        return 1
    print("vm-check: PASS", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
