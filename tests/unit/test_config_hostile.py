"""Hostile input to the settings loader (issue 12, SPEC §3, §6, §10): files that are not
files, texts built to exhaust the parser, secret files someone else controls, servers
outside their tunnel. Each gets one clear line naming the file (and line), never a
traceback, a hang or a gigabyte."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from phoned.__main__ import main
from phoned.config import parsing, rules
from phoned.config.check import MAX_REPORTED_PROBLEMS, split_key
from phoned.config.loader import MAX_APPS, MAX_BLF_KEYS, SettingsError, load_settings
from phoned.config.loader import parse_settings as parse
from phoned.config.overlay import parse_layered
from phoned.config.parsing import (
    MAX_BARE_CHARS,
    MAX_ENTRIES,
    MAX_ITEMS,
    MAX_KEY_CHARS,
    MAX_KEY_PARTS,
    MAX_LINES,
    MAX_NESTING,
    MAX_SETTINGS_FILE_BYTES,
    MAX_STRING_CHARS,
)
from phoned.config.rules import MAX_SECRET_FILE_BYTES

SECRET = "s3cret-Pa55"  # noqa: S105 (the test password that must never be shown)
WG_KEY = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
#: Lines 1..5; text appended starts at line 6.
BASE = f'[account]\nusername = "1001"\npassword = "{SECRET}"\n[server]\naddress = "203.0.113.10"\n'
NOBODY = 65534


def lines(*text: str) -> str:
    return "".join(f"{line}\n" for line in text)


def errors_of(text: str, source: str = "phoned.toml") -> list[str]:
    """The errors parse_settings reports for `text`."""
    with pytest.raises(SettingsError) as info:
        parse(text, source)
    return info.value.errors


def sip(value: str) -> str:
    """BASE with `[sip]` at line 6 and `user_agent = <value>` at line 7."""
    return BASE + f"[sip]\nuser_agent = {value}\n"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def load_within(path: Path, seconds: float = 5.0) -> list[str]:
    """The errors of load_settings(path), failing (not hanging) if it blocks."""
    outcome: list[list[str]] = []

    def load() -> None:
        try:
            load_settings(path)
        except SettingsError as exc:
            outcome.append(exc.errors)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"load_settings({path}) blocked"
    assert outcome, "load_settings accepted it"
    return outcome[0]


# ----------------------------------------------------------------- the file itself


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    """A named pipe with no writer: a plain open() of it blocks forever."""
    path = tmp_path / "phoned.toml"
    os.mkfifo(path)
    return path


def test_fifo_is_refused_without_blocking(fifo: Path) -> None:
    assert load_within(fifo) == [f"cannot read {fifo}: a FIFO, not a regular file"]


def test_character_device_is_refused_before_reading() -> None:
    assert load_within(Path("/dev/zero")) == [
        "cannot read /dev/zero: a character device, not a regular file"
    ]


def test_directory_is_refused(tmp_path: Path) -> None:
    assert load_within(tmp_path) == [f"cannot read {tmp_path}: a directory, not a regular file"]


def test_file_one_byte_over_the_bound_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "phoned.toml"
    path.write_text(sip('"' + "a" * (MAX_SETTINGS_FILE_BYTES - len(sip('""')) + 1) + '"'))
    assert path.stat().st_size == MAX_SETTINGS_FILE_BYTES + 1

    assert load_within(path) == [
        f"cannot read {path}: {MAX_SETTINGS_FILE_BYTES + 1} bytes, more than"
        f" {MAX_SETTINGS_FILE_BYTES} (256 KiB, the most a settings file may hold)"
    ]


def test_file_of_exactly_the_bound_is_read(tmp_path: Path) -> None:
    path = tmp_path / "phoned.toml"
    comment = "#" + "x" * 98 + "\n"  # 100 bytes a line
    filler = MAX_SETTINGS_FILE_BYTES - len(BASE)
    path.write_text(BASE + comment * (filler // 100) + "#" * (filler % 100))
    assert path.stat().st_size == MAX_SETTINGS_FILE_BYTES

    assert load_settings(path).server.address == "203.0.113.10"


def test_symlink_to_a_settings_file_is_followed(tmp_path: Path) -> None:
    real = tmp_path / "real.toml"
    real.write_text(BASE)
    link = tmp_path / "phoned.toml"
    link.symlink_to(real)

    assert load_settings(link).account.password == SECRET


def test_fetched_text_over_the_bound_is_refused_naming_it() -> None:
    text = sip('"' + "a" * MAX_SETTINGS_FILE_BYTES + '"')

    with pytest.raises(SettingsError) as info:
        parse_layered(BASE, "local.toml", text, "http://prov/b827eb12ab34.toml")

    assert info.value.errors == [
        f"http://prov/b827eb12ab34.toml:1: more than {MAX_SETTINGS_FILE_BYTES} bytes"
        " (256 KiB, the most a settings file may hold)"
    ]


# ------------------------------------------------------------- texts for tomllib


def test_350_nested_arrays_are_refused_at_their_line() -> None:
    assert errors_of(sip(nested(350))) == [
        f"phoned.toml:7: sip.user_agent holds arrays or tables nested more than {MAX_NESTING}"
        " levels deep"
    ]


def test_arrays_nested_beyond_the_parser_recursion_are_refused() -> None:
    assert errors_of(sip(nested(5000))) == [
        f"phoned.toml:7: arrays or tables nested more than {MAX_NESTING} levels deep"
    ]


def test_inline_tables_nested_beyond_the_parser_recursion_are_refused() -> None:
    text = BASE + "[sip]\n" + "x = " + "{a=" * 500 + "1" + "}" * 500 + "\n"

    assert errors_of(text) == [
        f"phoned.toml:7: arrays or tables nested more than {MAX_NESTING} levels deep"
    ]


def test_nesting_up_to_the_bound_reaches_the_rules() -> None:
    # [sip] is one level, so MAX_NESTING - 1 arrays inside it fill the bound
    inside = nested(MAX_NESTING - 1)

    assert errors_of(sip(inside)) == [
        f"phoned.toml:7: sip.user_agent must be a string, got {inside}"
    ]
    assert "nested" in errors_of(sip(nested(MAX_NESTING)))[0]


def test_integer_of_5000_digits_is_refused() -> None:
    errors = errors_of(BASE + "[sip]\nlocal_port = " + "9" * 5000 + "\n")

    assert len(errors) == 1
    assert errors[0].startswith(
        f"phoned.toml:7: a word of more than {MAX_BARE_CHARS} characters (key, number or"
        ' date): "999'
    )


def test_integer_beyond_64_bits_is_refused_and_shown() -> None:
    assert errors_of(BASE + "[sip]\nlocal_port = 0x1_0000_0000_0000_0000\n") == [
        "phoned.toml:7: sip.local_port must be a 64-bit integer (TOML), got 18446744073709551616"
    ]


def test_largest_64_bit_integer_reaches_the_rules() -> None:
    assert errors_of(BASE + f"[sip]\nlocal_port = {2**63 - 1}\n") == [
        f"phoned.toml:7: sip.local_port must be 1..65535, got {2**63 - 1}"
    ]


def test_wide_hex_integer_is_shown_by_its_size() -> None:
    errors = errors_of(BASE + "[sip]\nlocal_port = 0x" + "f" * 250 + "\n")

    assert errors == [
        "phoned.toml:7: sip.local_port must be a 64-bit integer (TOML), got an integer of"
        " about 302 digits"
    ]


def test_value_error_from_the_parser_is_one_line() -> None:
    # the bare-word bound keeps such a number from tomllib; the belt behind it holds too
    with pytest.raises(SettingsError) as info:
        parsing._loads("x = " + "9" * 5000, "phoned.toml")

    assert info.value.errors[0].startswith("phoned.toml:1: invalid TOML: ")
    assert len(info.value.errors) == 1


def test_crafted_multiline_key_is_not_a_traceback() -> None:
    # a literal multi-line string opened inside an array: the line scanner takes its
    # second line for a key whose quoted part TOML refuses
    text = BASE + "[sip]\nuser_agent = ['''\n\"\\q\" = 1\n''']\n"

    assert errors_of(text) == [
        'phoned.toml:7: sip.user_agent must be a string, got ["\\"\\\\q\\" = 1\\n"]'
    ]


def test_split_key_never_raises() -> None:
    assert split_key('a."\\q".b') == ("a", "\\q", "b")
    assert split_key('a."b.c"') == ("a", "b.c")


def test_dotted_key_of_too_many_parts_is_refused_before_parsing() -> None:
    key = ".".join(["a"] * (MAX_KEY_PARTS + 1))

    assert errors_of(BASE + f"{key} = 1\n") == [
        f"phoned.toml:6: a dotted key of more than {MAX_KEY_PARTS} parts (key, number or"
        f' date): "{key}"'
    ]


def test_dotted_key_with_quoted_parts_counts_them() -> None:
    key = ".".join(['"a b"'] * (MAX_KEY_PARTS + 1))

    assert errors_of(BASE + f"[{key}]\n")[0].startswith(
        f"phoned.toml:6: a dotted key of more than {MAX_KEY_PARTS} parts"
    )


def test_dots_inside_strings_and_comments_do_not_count() -> None:
    many = "." * (MAX_KEY_PARTS * 4)
    text = BASE + f'[sip]\nuser_agent = "{many}"  # {many}\n'

    assert parse(text, "x").sip.user_agent == many


def test_dotted_key_of_the_bound_reaches_the_rules() -> None:
    key = ".".join(["a"] * MAX_KEY_PARTS)

    # BASE ends in [server]: the key's 8 levels start there, 8 deep with it
    assert errors_of(BASE + f"{key} = 1\n") == ["phoned.toml:6: unknown key server.a"]


def test_100000_part_dotted_key_costs_nothing() -> None:
    # tomllib alone: time and memory in the square of the parts (8,000: 0.8 s, 260 MB)
    text = "x = 1\n" + ".".join(["a"] * 100_000) + " = 1\n"
    tracemalloc.start()
    started = time.perf_counter()
    try:
        errors = errors_of(text)
        elapsed_s = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert errors[0].startswith("phoned.toml:2: a dotted key of more than")
    assert elapsed_s < 1.0
    assert peak < 20_000_000


def test_string_longer_than_the_bound_is_refused() -> None:
    assert errors_of(sip('"' + "a" * (MAX_STRING_CHARS + 1) + '"')) == [
        f"phoned.toml:7: sip.user_agent must be at most {MAX_STRING_CHARS} characters,"
        f" got {MAX_STRING_CHARS + 1}"
    ]


def test_string_of_the_bound_is_accepted() -> None:
    long = "a" * MAX_STRING_CHARS

    assert parse(sip(f'"{long}"'), "x").sip.user_agent == long


def test_string_in_an_array_is_named_by_its_index() -> None:
    text = BASE + '[blf]\nkeys = ["1002", "' + "1" * (MAX_STRING_CHARS + 1) + '"]\n'

    assert errors_of(text) == [
        f"phoned.toml:7: blf.keys[1] must be at most {MAX_STRING_CHARS} characters,"
        f" got {MAX_STRING_CHARS + 1}"
    ]


def test_key_longer_than_the_bound_is_refused() -> None:
    name = "k" * (MAX_KEY_CHARS + 1)
    errors = errors_of(BASE + f'[apps]\n{name} = "http://203.0.113.10/x"\n')

    assert errors == [
        f'phoned.toml:6: a key longer than {MAX_KEY_CHARS} characters: "{name[:76]}...'
    ]


def test_too_many_keys_and_tables_are_refused_at_the_first_beyond() -> None:
    apps = [f'a{i} = "http://203.0.113.10/{i}"' for i in range(MAX_ENTRIES)]
    text = BASE + lines("[apps]", *apps)  # BASE holds 3 keys and 2 tables

    assert errors_of(text) == [
        f"phoned.toml:{MAX_ENTRIES + 1}: more than {MAX_ENTRIES} keys and tables"
    ]


def test_too_many_array_items_are_refused() -> None:
    text = BASE + "[blf]\nkeys = [\n" + '"1",\n' * (MAX_ITEMS + 1) + "]\n"

    assert errors_of(text) == [f"phoned.toml:{MAX_ITEMS + 8}: more than {MAX_ITEMS} array items"]


def test_too_many_lines_are_refused() -> None:
    assert errors_of(BASE + "\n" * MAX_LINES) == [
        f"phoned.toml:{MAX_LINES + 1}: more than {MAX_LINES} lines"
    ]


def test_commas_and_equals_inside_strings_do_not_count() -> None:
    many = ",=" * (MAX_ITEMS + MAX_ENTRIES)
    assert len(many) <= MAX_STRING_CHARS * 3
    text = BASE + lines("[sip]", f'user_agent = "{many[:MAX_STRING_CHARS]}"', f"# {many}")

    assert parse(text, "x").sip.user_agent == many[:MAX_STRING_CHARS]


def test_one_point_six_million_apps_never_reach_the_parser(tmp_path: Path) -> None:
    # the attacker's 962 MB file: any prefix of it is refused by size or by count
    path = tmp_path / "phoned.toml"
    app = 'a{} = "http://203.0.113.10/"\n'
    path.write_text(BASE + "[apps]\n" + "".join(app.format(i) for i in range(8000)))

    errors = load_within(path)

    assert errors == [f"{path}:{MAX_ENTRIES + 1}: more than {MAX_ENTRIES} keys and tables"]


# ------------------------------------------------------------- counts the schema sets


def apps(count: int) -> str:
    return BASE + lines("[apps]", *(f'a{i} = "http://203.0.113.10/{i}"' for i in range(count)))


def test_apps_up_to_the_bound_are_accepted() -> None:
    assert len(parse(apps(MAX_APPS), "x").apps) == MAX_APPS


def test_apps_beyond_the_bound_are_refused() -> None:
    assert errors_of(apps(MAX_APPS + 1)) == [
        f"phoned.toml:6: [apps] must have at most {MAX_APPS} apps, got {MAX_APPS + 1}"
    ]


def blf(count: int) -> str:
    return BASE + "[blf]\nkeys = [" + ", ".join(f'"{1000 + i}"' for i in range(count)) + "]\n"


def test_blf_keys_up_to_the_bound_are_accepted() -> None:
    assert len(parse(blf(MAX_BLF_KEYS), "x").blf.keys) == MAX_BLF_KEYS


def test_blf_keys_beyond_the_bound_are_refused() -> None:
    assert errors_of(blf(MAX_BLF_KEYS + 1)) == [
        f"phoned.toml:7: blf.keys must have at most {MAX_BLF_KEYS} extensions,"
        f" got {MAX_BLF_KEYS + 1}"
    ]


def test_problems_told_are_capped() -> None:
    count = MAX_REPORTED_PROBLEMS + 7
    errors = errors_of(BASE + lines("[sip]", *(f"unknown{i} = 1" for i in range(count))))

    assert len(errors) == MAX_REPORTED_PROBLEMS + 1
    assert errors[0] == "phoned.toml:7: unknown key sip.unknown0"
    assert errors[-1] == "phoned.toml: 7 more problems not shown"


# -------------------------------------------------------------- the command line


def _written(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "phoned.toml"
    path.write_text(text)
    return path


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo.toml"
    os.mkfifo(path)
    return path


#: Each file the attacker tried (issue 12), made in a test's tmp_path.
HOSTILE: dict[str, Callable[[Path], Path]] = {
    "350 nested arrays": lambda tmp: _written(tmp, sip(nested(350))),
    "5000 nested arrays": lambda tmp: _written(tmp, sip(nested(5000))),
    "5000-digit integer": lambda tmp: _written(
        tmp, BASE + "[sip]\nlocal_port = " + "9" * 5000 + "\n"
    ),
    "crafted multi-line key": lambda tmp: _written(
        tmp, BASE + "[sip]\nuser_agent = ['''\n\"\\q\" = 1\n''']\n"
    ),
    "/dev/zero": lambda tmp: Path("/dev/zero"),
    "50 MB string": lambda tmp: _written(tmp, sip('"' + "a" * 50_000_000 + '"')),
    "20000 apps": lambda tmp: _written(
        tmp, BASE + "[apps]\n" + "".join(f'a{i} = "http://x/"\n' for i in range(20_000))
    ),
    "FIFO": _fifo,
}


@pytest.fixture(params=sorted(HOSTILE))
def hostile_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return HOSTILE[request.param](tmp_path)


def test_check_config_says_one_line_and_exits_1(
    hostile_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(hostile_file)]) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"phoned: cannot read {hostile_file}: ") or err.startswith(
        f"phoned: {hostile_file}:"
    )
    assert len(err) < 300


def test_run_says_one_line_and_exits_1(hostile_file: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "phoned", "run", "--config", str(hostile_file)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert str(hostile_file) in done.stderr
    assert SECRET not in done.stderr


# ------------------------------------------------------------------- secret files


def secret(tmp_path: Path, content: str = SECRET, mode: int = 0o600, name: str = "s") -> Path:
    path = tmp_path / name
    path.write_text(content + "\n")
    path.chmod(mode)
    return path


def account_file(path: Path) -> tuple[str, str]:
    """Settings whose [account] password_file (line 3) is `path`; the key's name."""
    text = f'[account]\nusername = "1001"\npassword_file = "{path}"\n'
    return text + '[server]\naddress = "203.0.113.10"\n', "3: account.password_file"


def provisioning_file(path: Path) -> tuple[str, str]:
    """Settings whose [provisioning] password_file (line 8) is `path`."""
    text = BASE + lines("[provisioning]", 'username = "phone"', f'password_file = "{path}"')
    return text, "8: provisioning.password_file"


def vpn_key_file(path: Path) -> tuple[str, str]:
    """Settings with the VPN on, whose private_key_file (line 8) is `path`."""
    text = BASE.replace("203.0.113.10", "198.18.1.10") + lines(
        "[vpn]",
        "enabled = true",
        f'private_key_file = "{path}"',
        'address = "198.18.0.2/32"',
        f'primary = {{ endpoint = "192.0.2.11:51820", public_key = "{WG_KEY}",'
        ' allowed_ips = ["198.18.1.0/24"] }',
    )
    return text, "8: vpn.private_key_file"


SECRET_KEYS = {
    "account": (account_file, SECRET),
    "provisioning": (provisioning_file, SECRET),
    "vpn": (vpn_key_file, WG_KEY),
}


@pytest.fixture(params=sorted(SECRET_KEYS))
def secret_key(request: pytest.FixtureRequest) -> tuple[Callable[[Path], tuple[str, str]], str]:
    return SECRET_KEYS[request.param]


SecretKey = tuple[Callable[[Path], tuple[str, str]], str]


def refusal(settings: Callable[[Path], tuple[str, str]], path: Path) -> str:
    """The one error of the settings naming `path` in their secret-file key."""
    text, _ = settings(path)
    errors = errors_of(text)
    assert len(errors) == 1
    return errors[0]


def test_good_secret_file_is_accepted(tmp_path: Path, secret_key: SecretKey) -> None:
    settings, content = secret_key
    text, _ = settings(secret(tmp_path, content))

    parse(text, "x")  # no error


def test_secret_file_symlink_is_refused(tmp_path: Path, secret_key: SecretKey) -> None:
    settings, content = secret_key
    link = tmp_path / "link"
    link.symlink_to(secret(tmp_path, content))
    _, key = settings(link)

    assert refusal(settings, link) == (
        f'phoned.toml:{key} must be a readable file, got "{link}" (a symbolic link; name the'
        " file itself)"
    )


@pytest.fixture
def service_user(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Names the service's user (rules.SERVICE_USER, "phoned" on a phone) for one test."""

    def name(user: str) -> None:
        monkeypatch.setattr(rules, "SERVICE_USER", user)

    name("no-such-user-phoned-test")  # by default: none, as on a machine without phoned
    return name


@pytest.mark.usefixtures("service_user")
def test_secret_file_owned_by_another_user_is_refused(
    tmp_path: Path, secret_key: SecretKey
) -> None:
    settings, content = secret_key
    path = secret(tmp_path, content)
    os.chown(path, NOBODY, NOBODY)  # needs root, as CI runs
    _, key = settings(path)

    assert refusal(settings, path) == (
        f'phoned.toml:{key} must be a file owned by root, got "{path}"'
        f" (owned by nobody (uid {NOBODY}))"
    )


@pytest.mark.usefixtures("service_user")
def test_secret_file_of_another_user_is_refused_for_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = secret(tmp_path)
    os.chown(path, NOBODY, NOBODY)
    monkeypatch.setattr(os, "geteuid", lambda: 4242)  # as if phoned ran as uid 4242

    assert refusal(account_file, path) == (
        "phoned.toml:3: account.password_file must be a file owned by root or uid 4242 (the"
        f' user running phoned), got "{path}" (owned by nobody (uid {NOBODY}))'
    )


@pytest.mark.usefixtures("service_user")
def test_secret_file_of_the_user_running_phoned_is_accepted(
    tmp_path: Path, secret_key: SecretKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, content = secret_key
    path = secret(tmp_path, content)
    os.chown(path, NOBODY, NOBODY)
    monkeypatch.setattr(os, "geteuid", lambda: NOBODY)  # as if phoned ran as that user
    text, _ = settings(path)

    parse(text, "x")  # no error


@pytest.mark.usefixtures("service_user")
def test_secret_file_of_root_is_accepted_for_the_service(
    tmp_path: Path, secret_key: SecretKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, content = secret_key
    path = secret(tmp_path, content)
    os.chown(path, 0, 0)
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    text, _ = settings(path)

    parse(text, "x")  # no error: root may own it (and only root can change it)


def test_secret_file_of_the_service_user_is_accepted_by_root(
    tmp_path: Path, secret_key: SecretKey, service_user: Callable[[str], None]
) -> None:
    # `sudo phoned check-config` on the files the service (User=phoned) reads
    service_user("nobody")
    settings, content = secret_key
    path = secret(tmp_path, content)
    os.chown(path, NOBODY, NOBODY)
    text, _ = settings(path)

    parse(text, "x")  # no error


def test_secret_file_of_a_stranger_is_refused_naming_the_service_user(
    tmp_path: Path, service_user: Callable[[str], None]
) -> None:
    service_user("nobody")
    path = secret(tmp_path)
    os.chown(path, 4243, 4243)

    assert refusal(account_file, path) == (
        "phoned.toml:3: account.password_file must be a file owned by root or nobody"
        f' (uid {NOBODY}, the service\'s user), got "{path}" (owned by uid 4243)'
    )


def test_secret_file_too_large_is_refused(tmp_path: Path) -> None:
    path = secret(tmp_path, "x" * MAX_SECRET_FILE_BYTES)

    assert refusal(account_file, path) == (
        f'phoned.toml:3: account.password_file must be a file holding the password, got "{path}"'
        f" ({MAX_SECRET_FILE_BYTES + 1} bytes, more than {MAX_SECRET_FILE_BYTES}: too large)"
    )


def test_secret_file_device_is_refused_before_opening() -> None:
    assert refusal(account_file, Path("/dev/zero")) == (
        'phoned.toml:3: account.password_file must be a readable file, got "/dev/zero"'
        " (a character device, not a regular file)"
    )


# ----------------------------------------------------------- servers and tunnels


def vpn_settings(server: str, backup: str = "", backup_peer: bool = True) -> str:
    """[server] address (line 5) and, if given, the backup's address (line 8), with the VPN
    on: primary peer 198.18.1.0/24 and 2001:db8:1::/48, backup peer 198.18.2.0/24."""
    text = lines(
        "[account]",
        'username = "1001"',
        'password = "x"',
        "[server]",
        f'address = "{server}"',
        "[redundancy]",
        f"backup_destination = {'true' if backup else 'false'}",
        f'backup_destination_address = "{backup}"' if backup else "",
        "[vpn]",
        "enabled = true",
        'private_key_file = "{key}"',
        'address = "198.18.0.2/32"',
        "[vpn.primary]",
        'endpoint = "192.0.2.11:51820"',
        f'public_key = "{WG_KEY}"',
        'allowed_ips = ["198.18.1.0/24", "2001:db8:1::/48"]',
    )
    if backup_peer:
        text += lines(
            "[vpn.backup]",
            'endpoint = "192.0.2.12:51820"',
            f'public_key = "{WG_KEY}"',
            'allowed_ips = ["198.18.2.0/24"]',
        )
    return text


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return secret(tmp_path, WG_KEY, name="wg.key")


def vpn_errors(key_file: Path, text: str) -> list[str]:
    return errors_of(text.replace("{key}", str(key_file)))


def vpn_parse(key_file: Path, text: str) -> None:
    parse(text.replace("{key}", str(key_file)), "x")


def test_primary_outside_its_peer_is_refused(key_file: Path) -> None:
    assert vpn_errors(key_file, vpn_settings("203.0.113.10")) == [
        "phoned.toml:5: server.address must lie in vpn.primary.allowed_ips (198.18.1.0/24,"
        ' 2001:db8:1::/48) when [vpn] is enabled, got "203.0.113.10"'
    ]


def test_backup_outside_its_peer_is_refused(key_file: Path) -> None:
    assert vpn_errors(key_file, vpn_settings("198.18.1.10", "198.18.1.20")) == [
        "phoned.toml:8: redundancy.backup_destination_address must lie in vpn.backup.allowed_ips"
        ' (198.18.2.0/24) when [vpn] is enabled, got "198.18.1.20"'
    ]


@pytest.mark.parametrize(
    ("server", "backup"),
    [
        ("198.18.1.10", "198.18.2.10"),  # each in its own peer's networks
        ("2001:db8:1::10", ""),  # IPv6 in an IPv6 network
        ("pbx1.example.com", "pbx2.example.com"),  # names resolve later: not checked
    ],
)
def test_servers_inside_their_peers_are_accepted(key_file: Path, server: str, backup: str) -> None:
    vpn_parse(key_file, vpn_settings(server, backup))


def test_backup_without_a_peer_is_not_checked(key_file: Path) -> None:
    vpn_parse(key_file, vpn_settings("198.18.1.10", "203.0.113.20", backup_peer=False))


def test_servers_are_not_checked_with_the_vpn_off(key_file: Path) -> None:
    text = vpn_settings("203.0.113.10", "203.0.113.20").replace("enabled = true", "enabled = false")

    vpn_parse(key_file, text)


def test_provisioned_server_outside_its_peer_names_the_provisioned_file(key_file: Path) -> None:
    local = vpn_settings("198.18.1.10").replace("{key}", str(key_file))

    with pytest.raises(SettingsError) as info:
        parse_layered(local, "local.toml", '[server]\naddress = "192.0.2.99"\n', "prov.toml")

    assert info.value.errors == [
        "prov.toml:2: server.address must lie in vpn.primary.allowed_ips (198.18.1.0/24,"
        ' 2001:db8:1::/48) when [vpn] is enabled, got "192.0.2.99"'
    ]


def test_bad_peer_network_is_told_once(key_file: Path) -> None:
    text = vpn_settings("203.0.113.10").replace(
        '"2001:db8:1::/48"]', '"2001:db8:1::/48", "198.18.9.1/24"]'
    )

    assert vpn_errors(key_file, text) == [
        "phoned.toml:16: vpn.primary.allowed_ips[2] must be a network in CIDR notation,"
        ' e.g. 198.18.1.0/24, got "198.18.9.1/24"'
    ]
