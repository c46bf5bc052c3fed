"""Dockerfile.cross and scripts/build-image describe one build of the arm64 image (issue 6).

Checks that Dockerfile.cross parses as a Dockerfile (known instructions only, FROM first,
every `COPY --from` and `RUN --mount=...,from=` naming an earlier stage, an arm64 and an
amd64 stage, every RUN valid bash, every global ARG a stage uses declared again in it), that
its global ARGs carry the script's pinned versions and package lists with identical values,
that every "step N" of the script has a `# build-image step N` comment there (and every
stage and RUN one), and that the configure flags and wheel platforms agree. Each check is
also fed a broken text, to show it can fail.
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import phoned

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile.cross"
SCRIPT = REPO / "scripts" / "build-image"

INSTRUCTIONS = frozenset(
    {
        "FROM",
        "RUN",
        "CMD",
        "LABEL",
        "EXPOSE",
        "ENV",
        "ADD",
        "COPY",
        "ENTRYPOINT",
        "VOLUME",
        "USER",
        "WORKDIR",
        "ARG",
        "ONBUILD",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "SHELL",
        "MAINTAINER",
    }
)
PACKAGE_LISTS = ("RUNTIME_PACKAGES", "BUILD_PACKAGES")
# Built from PJPROJECT_TARBALL in both files; compared only when the Dockerfile names it.
OPTIONAL_PINS = frozenset({"PJPROJECT_URL"})
STEP_COMMENT = re.compile(r"^\s*#\s*build-image step (\d+)\b")


class DockerfileError(ValueError):
    """The text is not a Dockerfile this build could use."""


@dataclass(frozen=True)
class Instruction:
    """One instruction, continuations joined, with the comment block right above it."""

    line: int
    keyword: str
    args: str
    comments: tuple[str, ...]


@dataclass(frozen=True)
class Stage:
    """A FROM and the instructions up to the next FROM."""

    name: str
    platform: str
    base: str
    body: tuple[Instruction, ...]


def parse(text: str) -> list[Instruction]:
    """A Dockerfile's instructions; `DockerfileError` for an unknown keyword or a dangling `\\`.

    As Docker does: a trailing backslash continues the line, and comment and blank lines are
    dropped, also in the middle of a continued instruction.
    """
    found: list[Instruction] = []
    pending: list[str] = []
    comments: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped:
            if not pending:
                comments = []
            continue
        if stripped.startswith("#"):
            if not pending:
                comments.append(stripped)
            continue
        if not pending:
            start = number
        body = raw.rstrip()
        if body.endswith("\\"):
            pending.append(body[:-1])
            continue
        pending.append(body)
        keyword, *rest = re.split(r"\s+", "".join(pending).strip(), maxsplit=1)
        args = rest[0] if rest else ""
        pending = []
        if keyword.upper() not in INSTRUCTIONS:
            raise DockerfileError(f"line {start}: {keyword!r} is not a Dockerfile instruction")
        found.append(Instruction(start, keyword.upper(), args.strip(), tuple(comments)))
        comments = []
    if pending:
        raise DockerfileError(f"line {start}: the last instruction ends in a backslash")
    return found


def flags(args: str) -> tuple[dict[str, list[str]], str]:
    """Leading `--name=value` flags of an instruction (repeatable) and the rest of it."""
    found: dict[str, list[str]] = {}
    rest = args
    while match := re.match(r"--([a-z-]+)=(\S+)\s*", rest):
        found.setdefault(match[1], []).append(match[2])
        rest = rest[match.end() :]
    return found, rest


def stages(instructions: list[Instruction]) -> list[Stage]:
    """The build stages; `DockerfileError` when anything but ARG comes before the first FROM."""
    found: list[Stage] = []
    current: tuple[str, str, str] | None = None
    body: list[Instruction] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            if current is not None:
                found.append(Stage(*current, tuple(body)))
            options, rest = flags(instruction.args)
            words = rest.split()
            if len(words) not in (1, 3) or (len(words) == 3 and words[1].upper() != "AS"):
                raise DockerfileError(f"line {instruction.line}: FROM image [AS name] expected")
            name = words[2].lower() if len(words) == 3 else ""
            current, body = (name, options.get("platform", [""])[-1], words[0].lower()), []
        elif current is None and instruction.keyword != "ARG":
            raise DockerfileError(
                f"line {instruction.line}: {instruction.keyword} before the first FROM"
            )
        elif current is not None:
            body.append(instruction)
    if current is None:
        raise DockerfileError("no FROM")
    found.append(Stage(*current, tuple(body)))
    return found


def structure_problems(text: str) -> list[str]:
    """What keeps the text from being a multi-stage arm64-from-amd64 build, as messages."""
    try:
        built = stages(parse(text))
    except DockerfileError as exc:
        return [str(exc)]
    problems: list[str] = []
    earlier: set[str] = set()
    for stage in built:
        for instruction in stage.body:
            options, _ = flags(instruction.args)
            sources = options.get("from", []) if instruction.keyword == "COPY" else []
            for mount in options.get("mount", []) if instruction.keyword == "RUN" else []:
                fields = dict(field.partition("=")[::2] for field in mount.split(","))
                sources += [fields["from"]] if "from" in fields else []
            problems += [
                f"line {instruction.line}: --from={source} names no earlier stage"
                for source in sources
                if source.lower() not in earlier
            ]
        if stage.name:
            if stage.name in earlier:
                problems.append(f"stage {stage.name} is named twice")
            earlier.add(stage.name)
    platforms = {stage.platform for stage in built}
    problems += [
        f"no --platform={wanted} stage"
        for wanted in ("linux/arm64", "linux/amd64")
        if wanted not in platforms
    ]
    return problems


def global_args(text: str) -> dict[str, str]:
    """`ARG NAME=value` before the first FROM, quotes removed."""
    found: dict[str, str] = {}
    for instruction in parse(text):
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            for word in shlex.split(instruction.args):
                name, _, value = word.partition("=")
                found[name] = value
    return found


def script_pins(text: str) -> dict[str, str]:
    """`NAME=value` between the script's "pinned versions" comment and its dashed line."""
    lines = text.splitlines()
    first = next(
        i for i, line in enumerate(lines) if line.startswith("#") and "pinned versions" in line
    )
    found: dict[str, str] = {}
    for line in lines[first + 1 :]:
        if re.fullmatch(r"#\s*-{10,}", line.strip()):
            return found
        if match := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line.strip()):
            value = match[2]
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            found[match[1]] = value
    raise AssertionError("the pinned block of scripts/build-image has no closing dashed line")


def script_array(text: str, name: str) -> set[str]:
    """The words of a bash array `NAME=( ... )`, which may span lines."""
    match = re.search(rf"^{name}=\((.*?)\)", text, re.MULTILINE | re.DOTALL)
    assert match, f"scripts/build-image has no {name}=( ... )"
    return {word for line in match[1].splitlines() for word in line.partition("#")[0].split()}


def pin_mismatches(script: str, dockerfile: str) -> list[str]:
    """Where the Dockerfile's global ARGs differ from the script's pins and package lists."""
    pins, args = script_pins(script), global_args(dockerfile)
    problems = [
        f"{name}: scripts/build-image has {value!r}, Dockerfile.cross "
        + (f"has {args[name]!r}" if name in args else "has no global ARG")
        for name, value in pins.items()
        if args.get(name) != value and (name in args or name not in OPTIONAL_PINS)
    ]
    for name in PACKAGE_LISTS:
        script_set, docker_set = script_array(script, name), set(args.get(name, "").split())
        if script_set != docker_set:
            problems.append(
                f"{name}: only in scripts/build-image {sorted(script_set - docker_set)}, "
                f"only in Dockerfile.cross {sorted(docker_set - script_set)}"
            )
    return problems


def script_steps(script: str) -> set[int]:
    """The numbers of the script's `step "N: ..."` calls."""
    return {int(n) for n in re.findall(r'^step "(\d+):', script, re.MULTILINE)}


def missing_steps(script: str, dockerfile: str) -> set[int]:
    """Script steps with no `# build-image step N` comment in the Dockerfile."""
    noted = {int(m[1]) for line in dockerfile.splitlines() if (m := STEP_COMMENT.match(line))}
    return script_steps(script) - noted


def unlabelled(dockerfile: str) -> list[int]:
    """Lines of FROMs and RUNs whose comment block names no build-image step."""
    return [
        instruction.line
        for instruction in parse(dockerfile)
        if instruction.keyword in ("FROM", "RUN")
        and not any(STEP_COMMENT.match(comment) for comment in instruction.comments)
    ]


def words_after(text: str, prefixes: tuple[str, ...]) -> set[str]:
    """Every whitespace-separated word starting with one of the prefixes."""
    return {word.strip("\"'\\") for word in text.split() if word.startswith(prefixes)}


def bash_errors(dockerfile: str) -> list[str]:
    """`line N` of every RUN (its flags taken off) that `bash -n` refuses."""
    bash = shutil.which("bash")
    assert bash is not None
    return [
        f"line {run.line}"
        for run in parse(dockerfile)
        if run.keyword == "RUN"
        and subprocess.run(
            [bash, "-n", "-c", flags(run.args)[1]], capture_output=True, check=False
        ).returncode
    ]


def undeclared_args(dockerfile: str) -> list[str]:
    """Uses of a global ARG inside a stage that did not declare it again (Docker hides it)."""
    names = global_args(dockerfile)
    problems: list[str] = []
    for stage in stages(parse(dockerfile)):
        declared: set[str] = set()
        for instruction in stage.body:
            if instruction.keyword == "ARG":
                declared |= {word.partition("=")[0] for word in shlex.split(instruction.args)}
                continue
            problems += [
                f"line {instruction.line}: ${name} without ARG {name} in stage {stage.name}"
                for name in names
                if name not in declared and re.search(rf"\$\{{?{name}\b", instruction.args)
            ]
    return problems


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def script() -> str:
    return SCRIPT.read_text()


def test_the_dockerfile_parses_as_a_multi_stage_cross_build(dockerfile: str) -> None:
    assert structure_problems(dockerfile) == []
    built = stages(parse(dockerfile))
    assert built[-1].base == "scratch"
    assert [i.keyword for i in built[-1].body] == ["COPY"]


@pytest.mark.parametrize(
    ("broken", "reported"),
    [
        ("ARG A=1\nFROM debian AS one\nRUNN true\n", "'RUNN' is not a Dockerfile instruction"),
        ("ARG A=1\nRUN true\nFROM debian\n", "RUN before the first FROM"),
        ("FROM debian AS one\nRUN true \\\n", "ends in a backslash"),
        ("FROM debian AS one\nCOPY --from=two /a /b\nFROM debian AS two\n", "--from=two"),
        ("FROM debian AS one\nRUN --mount=type=bind,from=nowhere true\n", "--from=nowhere"),
        ("FROM --platform=linux/amd64 debian AS one\n", "no --platform=linux/arm64 stage"),
    ],
)
def test_a_broken_dockerfile_is_reported(broken: str, reported: str) -> None:
    assert any(reported in problem for problem in structure_problems(broken))


def test_comments_and_blank_lines_inside_a_continuation_are_dropped_as_docker_does() -> None:
    parsed = parse("# top\nFROM debian AS a\n# step\nRUN a \\\n    # dropped\n\n    && b\n")

    assert [(i.line, i.keyword) for i in parsed] == [(2, "FROM"), (4, "RUN")]
    assert parsed[1].args.split() == ["a", "&&", "b"]
    assert parsed[1].comments == ("# step",)


def test_every_pin_of_the_script_is_a_global_arg_with_the_same_value(
    script: str, dockerfile: str
) -> None:
    pins = script_pins(script)

    assert {"DEBIAN_SUITE", "PJPROJECT_SHA256", "PYTHON_VERSION", "BOARD"} <= pins.keys()
    assert pin_mismatches(script, dockerfile) == []


def test_a_changed_sha256_in_the_dockerfile_is_reported(script: str, dockerfile: str) -> None:
    sha = script_pins(script)["PJPROJECT_SHA256"]
    altered = dockerfile.replace(f"PJPROJECT_SHA256={sha}", f"PJPROJECT_SHA256={'0' * 64}")

    assert altered != dockerfile
    assert [p.split(":")[0] for p in pin_mismatches(script, altered)] == ["PJPROJECT_SHA256"]


def test_a_missing_pin_and_a_changed_package_list_are_reported(
    script: str, dockerfile: str
) -> None:
    altered = re.sub(r"(?m)^ARG BOARD=.*\n", "", dockerfile).replace(" libasound2-dev", "")

    problems = pin_mismatches(script, altered)

    assert any(p.startswith("BOARD:") and "no global ARG" in p for p in problems)
    assert any(p.startswith("BUILD_PACKAGES:") and "libasound2-dev" in p for p in problems)


def test_the_script_pins_are_read_from_its_pinned_block_only() -> None:
    text = 'X=0\n# ---- pinned versions\nA="1"\n# note\nB=2\n# ------------\nC=3\n'

    assert script_pins(text) == {"A": "1", "B": "2"}
    assert script_array("L=(a b\n    c) # x\n", "L") == {"a", "b", "c"}


def test_every_step_of_the_script_has_its_step_in_the_dockerfile(
    script: str, dockerfile: str
) -> None:
    assert script_steps(script) == set(range(1, 9))
    assert missing_steps(script, dockerfile) == set()


def test_a_step_missing_from_the_dockerfile_is_reported(script: str, dockerfile: str) -> None:
    altered = "\n".join(
        line for line in dockerfile.splitlines() if "build-image step 6" not in line
    )

    assert missing_steps(script, altered) == {6}


def test_every_stage_and_run_names_its_step(dockerfile: str) -> None:
    assert unlabelled(dockerfile) == []
    assert unlabelled("# build-image step 2: x\nFROM debian\n\nRUN true\n") == [4]


def test_every_run_is_valid_bash(dockerfile: str) -> None:
    assert bash_errors(dockerfile) == []
    assert bash_errors("FROM debian AS a\nRUN --mount=type=cache,target=/c true\n") == []
    assert bash_errors("FROM debian AS a\nRUN { true \\\n    && false\n") == ["line 2"]


def test_every_stage_declares_the_global_args_it_uses(dockerfile: str) -> None:
    assert undeclared_args(dockerfile) == []
    broken = "ARG A=1\nFROM debian:${A} AS a\nARG A\nRUN echo $A\nFROM debian AS b\nRUN echo ${A}\n"
    assert undeclared_args(broken) == ["line 6: $A without ARG A in stage b"]


def test_configure_flags_and_wheel_platforms_agree(script: str, dockerfile: str) -> None:
    configure = ("--disable-", "--enable-", "--with-", "--host=")
    script_flags = words_after(script, configure)

    assert "--disable-video" in script_flags
    assert words_after(dockerfile, configure) == {
        flag.replace("$ROOT", "/sysroot").replace('"', "") for flag in script_flags
    }
    script_tags = set(re.findall(r"\bmanylinux[_0-9]*[0-9]\b", script))

    assert "manylinux2014" in script_tags
    assert set(re.findall(r"\b(manylinux[_0-9]*[0-9])_aarch64\b", dockerfile)) == script_tags


def test_the_wheel_carries_phoned_and_never_the_lab() -> None:
    """setup.cfg's package list: every phoned subpackage, and phonelab left out (issue 10).

    Inside the image's tree (scripts/test-arm64 copies the tests, not firmware/), the same
    rule is checked on what was installed: phoned's subpackages, and no phonelab beside.
    """
    product = REPO / "firmware" / "phoned"
    if not product.is_dir():
        installed = Path(phoned.__file__).resolve().parent
        assert not (installed.parent / "phonelab").exists()
        assert {"core", "config", "probe", "sip", "net", "device", "service"} <= {
            p.name for p in installed.iterdir() if (p / "__init__.py").exists()
        }
        return
    import setuptools  # type: ignore[import-untyped]  # noqa: PLC0415 - the repo's check only

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    include = cfg["options.packages.find"]["include"].split(",")
    found = setuptools.find_packages(str(REPO / "firmware"), include=[i.strip() for i in include])
    assert "phonelab" not in " ".join(found)
    subpackages = {p.name for p in product.iterdir() if (p / "__init__.py").exists()}
    assert {f"phoned.{name}" for name in subpackages} | {"phoned"} == set(found)
