"""The docker compose file and the systemd unit in docs/LCZERO.md run what they claim.

The compose file is read with a small parser of the YAML it uses (block
mappings and sequences, flow sequences, folded and literal block scalars),
written to YAML's rules for line folding: a folded scalar's more-indented
line keeps its line break, which is how an earlier version lost every flag.
The command each file runs is then parsed by the real ``lc0weights`` parser.
``systemd-analyze verify`` checks the unit too when it is installed.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from lc0weights.cli import build_parser

DOC = Path(__file__).resolve().parents[1] / "docs" / "LCZERO.md"


def fenced_block(language: str, after: str) -> str:
    text = DOC.read_text()
    start = text.index(after)
    m = re.compile(rf"^```{language}\n(.*?)^```", re.MULTILINE | re.DOTALL).search(text, start)
    assert m, f"no ```{language} block after {after!r} in {DOC}"
    return m.group(1)


# -- a parser of the YAML subset compose files here use --------------------------------------

def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] == " "):
            return line[:i].rstrip()
    return line.rstrip()


def _scalar(text: str):
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [_scalar(part) for part in re.findall(r'"[^"]*"|\'[^\']*\'|[^,]+', inner)] if inner else []
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _block_scalar(style: str, lines: list[str]) -> str:
    """``>``/``|`` with optional ``-`` chomping, per YAML 1.2 folding of the lines given."""
    body = [line for line in lines]
    while body and not body[-1].strip():
        body.pop()
    indent = min(len(line) - len(line.lstrip()) for line in body if line.strip())
    rows = [line[indent:] for line in body]
    if style.startswith("|"):
        text = "\n".join(rows)
    else:
        text = ""
        for i, row in enumerate(rows):
            if i == 0:
                text = row
            elif not row or row[0] == " " or not rows[i - 1] or rows[i - 1][0] == " ":
                text += "\n" + row          # empty or more-indented lines keep their breaks
            else:
                text += " " + row
    return text if style.endswith("-") else text + "\n"


def parse_yaml(text: str):
    lines = [_strip_comment(line) for line in text.splitlines()]
    value, _ = _node(lines, 0, 0)
    return value


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _next(lines, i):
    while i < len(lines) and not lines[i].strip():
        i += 1
    return i


def _node(lines, i, indent):
    i = _next(lines, i)
    if i >= len(lines) or _indent(lines[i]) < indent:
        return None, i
    indent = _indent(lines[i])
    if lines[i].strip().startswith("- ") or lines[i].strip() == "-":
        items = []
        while i < len(lines) and _indent(lines[i]) == indent and lines[i].strip().startswith("-"):
            rest = lines[i].strip()[1:].strip()
            value, i = _value(lines, i, indent, rest)
            items.append(value)
            i = _next(lines, i)
        return items, i
    mapping = {}
    while i < len(lines) and _indent(lines[i]) == indent:
        key, _, rest = lines[i].strip().partition(":")
        mapping[key.strip()] = None
        mapping[key.strip()], i = _value(lines, i, indent, rest.strip())
        i = _next(lines, i)
    return mapping, i


def _value(lines, i, indent, rest):
    if rest in (">", ">-", "|", "|-"):
        j = i + 1
        block = []
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > indent):
            block.append(lines[j])
            j += 1
        return _block_scalar(rest, block), j
    if rest:
        return _scalar(rest), i + 1
    return _node(lines, i + 1, indent + 1)


def test_the_parser_folds_as_yaml_does():
    doc = parse_yaml("a:\n  b: >\n    one\n    two\n      three\n  c: [x, 'y z']\n  d:\n    - p\n    - >-\n      q\n      r\n")
    assert doc == {"a": {"b": "one two\n  three\n", "c": ["x", "y z"], "d": ["p", "q r"]}}


# -- the compose file ------------------------------------------------------------------------

def test_compose_mirror_runs_one_command_with_every_flag_from_a_writable_copy():
    compose = parse_yaml(fenced_block("yaml", "### With Docker"))
    mirror = compose["services"]["mirror"]
    command = mirror["command"]
    assert isinstance(command, list) and command[:2] == ["sh", "-c"] and len(command) == 3, command
    script = command[2]
    assert "\n" not in script.strip(), f"sh -c would run only the first line of: {script!r}"
    steps = [shlex.split(step) for step in script.split("&&")]
    final = steps[-1]
    assert final[:3] == ["exec", "lc0weights", "mirror"], final
    args = build_parser().parse_args(final[2:])
    assert args.listen == "0.0.0.0:8080" and args.cache == "/mirror-cache"
    assert args.client_cache == "/client/client-cache" and args.trust.startswith("ed25519:")
    assert args.fallback == "https://training.lczero.org/get_network?sha="
    read_only = {v.split(":")[1] for v in mirror["volumes"] if v.endswith(":ro")}
    for step in steps:
        if step[:2] == ["pip", "install"]:
            sources = [a for a in step[2:] if not a.startswith("-")]
            assert not set(sources) & read_only, f"pip builds in place; {sources} is mounted read-only"
    client = compose["services"]["client"]
    assert client["command"][:2] == ["--network-mirror", "http://mirror:8080/"]


# -- the systemd unit ------------------------------------------------------------------------

def _unit() -> str:
    return fenced_block("ini", "### As a systemd user service")


def _service_settings(unit: str) -> dict[str, list[str]]:
    joined = re.sub(r"\\\n\s*", " ", unit)         # systemd's line continuation
    settings, section = {}, None
    for line in joined.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and section == "Service":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_systemd_unit_runs_the_pipx_installed_mirror_with_its_flags():
    settings = _service_settings(_unit())
    argv = shlex.split(settings["ExecStart"][0])
    assert argv[0] == "%h/.local/bin/lc0weights" and argv[1] == "mirror"
    args = build_parser().parse_args(argv[1:])
    assert args.listen == "127.0.0.1:8080" and args.fallback.endswith("?sha=")
    environment = shlex.split(settings["Environment"][0])
    assert len(environment) == 1 and environment[0].startswith("LC0WEIGHTS_TRUST=ed25519:"), environment


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_accepts_the_unit(tmp_path):
    unit = tmp_path / "lc0weights-mirror.service"
    # The unit's own command may not be installed here: check the file with one that is.
    unit.write_text(_unit().replace("%h/.local/bin/lc0weights", shutil.which("true") or "/bin/true"))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                          check=False)
    problems = [line for line in done.stderr.splitlines() if unit.name in line]
    assert done.returncode == 0 and not problems, done.stderr
