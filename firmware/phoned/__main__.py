"""The `phoned` command line (SPEC §4): run, check-config, status, call, hangup, app, resync, demo.

Owns: argument parsing, loading the settings, exit codes and turning every expected error
into one clear message on stderr (never a traceback). Must not touch: the service's
internals (the supervisor runs them) or the lab (the demo module drives it).

Exit codes: 0 success; 1 bad settings or the service failed; 2 bad usage; 3 the service is
not running (`status`, `call`, `hangup`, `app`, `resync`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from phoned import __version__
from phoned.errors import ControlError, PhonedError

#: When this process started (close enough: the interpreter's own start-up is before it).
_STARTED_AT = time.monotonic()
DEFAULT_CONFIG = "/etc/phoned/phoned.toml"
DEFAULT_CONTROL_SOCKET = "/run/phoned/control.sock"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phoned", description="SIP desk phone service")
    parser.add_argument("--version", action="version", version=f"phoned {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the service in the foreground")
    run.add_argument("--config", default=DEFAULT_CONFIG, help="settings file (TOML)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    check = sub.add_parser("check-config", help="validate a settings file")
    check.add_argument("file")
    status = sub.add_parser("status", help="show the running service's state")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--config", default=DEFAULT_CONFIG, help="settings file (TOML)")
    call = sub.add_parser("call", help="place a call through the active server")
    call.add_argument("ext", help="extension (or sip: URI) to call")
    call.add_argument("--config", default=DEFAULT_CONFIG, help="settings file (TOML)")
    app = sub.add_parser("app", help="fetch a Phone App from the active server")
    app.add_argument("name", help="the app's name in [apps]")
    app.add_argument("--config", default=DEFAULT_CONFIG, help="settings file (TOML)")
    hangup = sub.add_parser("hangup", help="end the running call(s)")
    hangup.add_argument("--call-id", type=int, default=None, help="only this call")
    hangup.add_argument("--config", default=DEFAULT_CONFIG, help="settings file (TOML)")
    resync = sub.add_parser("resync", help="fetch, re-read and apply the settings now, live")
    resync.add_argument("--config", default=DEFAULT_CONFIG, help="settings file (TOML)")
    demo = sub.add_parser("demo", help="run the local lab: fail over and back (SPEC §8)")
    demo.add_argument("--interval", type=int, default=2, help="keep-alive interval in s")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `phoned` console script."""
    args = _parser().parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": lambda a: _run(a.config, a.log_level),
        "check-config": lambda a: _check_config(a.file),
        "status": lambda a: _status(a.config, a.json),
        "call": lambda a: _ask(a.config, "call", {"ext": a.ext}),
        "hangup": lambda a: _ask(a.config, "hangup", {"call_id": a.call_id}),
        "app": lambda a: _ask(a.config, "app", {"name": a.name}),
        "resync": lambda a: _ask(a.config, "resync", {}),
        "demo": lambda a: _demo(a.interval),
    }
    try:
        return commands[args.command](args)
    except PhonedError as exc:  # ConfigError included: one clear message, no traceback
        print(f"phoned: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _demo(interval_s: int) -> int:
    try:
        from phonelab.demo import run_demo  # noqa: PLC0415 - the lab is only for the demo
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("phonelab"):
            raise
        print(
            "phoned demo: the lab is not installed here (it is a development tool, never on "
            "a phone); run `make demo` from a phoned checkout",
            file=sys.stderr,
        )
        return 2

    return run_demo(interval_s=interval_s)


def _run(config_path: str, level: str) -> int:
    from phoned.crash import prepare_for_crashes  # noqa: PLC0415 - keep `status` light
    from phoned.logfmt import setup_logging  # noqa: PLC0415
    from phoned.service.configsource import FETCH_TIMEOUT_S, ConfigSource  # noqa: PLC0415
    from phoned.service.journal import install_repeat_limit  # noqa: PLC0415

    prepare_for_crashes()  # SPEC §10: no core file, no secret in what a crash prints
    setup_logging(getattr(logging, level.upper()))
    install_repeat_limit()  # SPEC §10: junk at a port must not flood the log
    source = ConfigSource(config_path)
    # SPEC §7: at most 5 s for the server, counted from our start, before probing starts;
    # the service's modules (pjsua2...) load meanwhile.
    waited_s = time.monotonic() - _STARTED_AT
    with ThreadPoolExecutor(1, thread_name_prefix="boot") as boot:
        fetched = boot.submit(source.boot, max(1.0, FETCH_TIMEOUT_S - waited_s))
        from phoned.service.supervisor import Supervisor  # noqa: PLC0415 - imports pjsua2

        settings = fetched.result()  # a bad local file raises here: a message, exit 1
    supervisor = Supervisor(settings, source)
    code = supervisor.run()
    if supervisor.reexec:  # SPEC §7: the same command line, the same PID
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, sys.orig_argv)  # noqa: S606 - our own command line
    return code


def _check_config(path: str) -> int:
    from phoned.config.loader import load_settings  # noqa: PLC0415

    settings = load_settings(path)
    backup = (
        f"backup {settings.redundancy.backup_destination_address}"
        if settings.backup_enabled
        else "no backup"
    )
    print(f"{path}: ok (primary {settings.server.address}, {backup})")
    return 0


def _control_socket(config_path: str) -> str:
    from phoned.config.loader import load_settings  # noqa: PLC0415

    if config_path == DEFAULT_CONFIG and not os.path.exists(config_path):
        return DEFAULT_CONTROL_SOCKET  # no settings file here: try the default socket
    return load_settings(config_path).service.control_socket


def _status(config_path: str, as_json: bool) -> int:
    from phoned.service.control_client import request  # noqa: PLC0415
    from phoned.service.status import render_text  # noqa: PLC0415

    try:
        snapshot = request(_control_socket(config_path), "status")
    except ControlError as exc:
        print(f"phoned: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(snapshot, indent=2) if as_json else render_text(snapshot))
    return 0


def _ask(config_path: str, cmd: str, args: dict[str, object]) -> int:
    from phoned.service.control_client import request  # noqa: PLC0415

    try:
        # resync: a fetch (5 s at most, SPEC §7) and the apply, answered when done
        timeout_s = 15.0 if cmd == "resync" else 5.0
        result = request(_control_socket(config_path), cmd, args, timeout_s=timeout_s)
    except ControlError as exc:
        print(f"phoned: {exc}", file=sys.stderr)
        return 3 if "not running" in str(exc) else 1
    if cmd == "app":
        sys.stdout.write(result["content"])
        if not result["content"].endswith("\n"):
            sys.stdout.write("\n")
    elif cmd == "resync":
        return _print_resync(result)
    elif cmd == "call":
        print(f"calling {args['ext']} through the {result['server']} (call {result['call_id']})")
    else:
        print(f"ended {result['ended']} call(s)")
    return 0


def _print_resync(result: dict[str, Any]) -> int:
    """What `phoned resync` did; exit 1 when the provisioning file could not be fetched."""
    fetch = str(result.get("fetch", ""))
    fetched = fetch in ("", "fetched", "not modified", "local")
    changed = ", ".join(result.get("changed") or []) or "nothing changed"
    if fetched or result.get("changed"):  # the local file may have changed all the same
        print(f"{result.get('source')}: applied ({changed})")
    for key in result.get("keys") or []:
        print(f"  {key}")
    if not fetched:
        print(f"phoned: provisioning file not fetched: {fetch}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
