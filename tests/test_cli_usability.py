"""The command lines as people type them: messages, exit codes and the files left behind.

Every test runs the installed entry points' modules in a subprocess on real nets
from the shared training run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_paths
from lc0weights import Net

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, module="lc0weights.cli", timeout=300, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    kw.setdefault("capture_output", "stdout" not in kw)
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], env=env,
                          text=True, timeout=timeout, **kw)


def server(*args, **kw):
    return cli(*args, module="service.cli", **kw)


def one_error_line(done, *words, code=1):
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    assert all(w in lines[-1] for w in words), lines[-1]
    if code == 1:
        assert len(lines) == 1, done.stderr


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two successive nets of the run and a lossless patch between them, made by the CLI."""
    folder = tmp_path_factory.mktemp("pair")
    paths = run_paths()
    base, target = folder / "base.pb.gz", folder / "target.pb.gz"
    base.write_bytes(paths[0].read_bytes())
    target.write_bytes(paths[1].read_bytes())
    patch = folder / "patch"
    done = cli("diff", base, target, "-o", patch, "--json")
    assert done.returncode == 0, done.stderr
    return base, target, patch, json.loads(done.stdout)


# -- item 5: outputs never overwrite inputs; existing outputs need --force --------------

def test_an_existing_output_is_refused_without_force(pair, tmp_path):
    base, target, patch, _ = pair
    out = tmp_path / "p"
    out.write_bytes(b"keep me")
    done = cli("diff", base, target, "-o", out)
    one_error_line(done, str(out), "already exists", "-f/--force")
    assert out.read_bytes() == b"keep me"
    done = cli("diff", base, target, "-o", out, "-f")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == patch.read_bytes()


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_an_input_is_never_the_output(pair, force):
    base, target, patch, _ = pair
    before = digest(target)
    done = cli("diff", base, target, "-o", target, *force)
    one_error_line(done, str(target), "is also an input")
    assert digest(target) == before
    done = cli("apply", base, patch, "-o", base, *force)
    one_error_line(done, "is also an input")


def test_fetch_refuses_an_existing_output_before_reading_the_repository(tmp_path):
    out = tmp_path / "net.pb.gz"
    out.write_bytes(b"keep me")
    done = cli("fetch", tmp_path / "no-repository", "-o", out, "--cache", tmp_path / "cache")
    one_error_line(done, str(out), "already exists")
    assert out.read_bytes() == b"keep me" and not (tmp_path / "cache").exists()


# -- item 6: errors that name the user's paths, checked before any work --------------------

def test_an_output_in_a_missing_folder_is_refused_before_the_inputs_are_read(pair, tmp_path):
    base, _, _, _ = pair
    out = tmp_path / "nosuchdir" / "out.patch"
    # the target does not exist either: the output is checked first, so no work is done
    done = cli("diff", base, tmp_path / "missing.pb.gz", "-o", out)
    one_error_line(done, str(out), "does not exist")
    assert ".tmp" not in done.stderr
    assert not out.parent.exists()


def test_apply_with_base_and_patch_swapped_says_so(pair, tmp_path):
    base, _, patch, _ = pair
    for command in (["apply", patch, base, "-o", tmp_path / "out.pb.gz"], ["verify", patch, base, base]):
        done = cli(*command)
        one_error_line(done, str(patch), "this is a patch; did you swap BASE and PATCH?")
    assert list(tmp_path.iterdir()) == []


def test_inspect_into_a_closed_pipe_exits_quietly(pair):
    base = pair[0]
    read_end, write_end = os.pipe()
    os.close(read_end)                     # a reader that has already gone, as `| head -1` ends up
    try:
        done = cli("inspect", base, stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


@pytest.mark.parametrize("args, words", [
    (["--workers", "-1"], ["--workers", "at least 1", "'-1'"]),
    (["--workers", "0"], ["--workers", "at least 1"]),
    (["--codec", "nosuch"], ["unknown codec 'nosuch'", "cm1", "varint-brotli", "stored"]),
])
def test_bad_option_values_are_usage_errors_that_say_what_is_valid(pair, tmp_path, args, words):
    base, target, _, _ = pair
    done = cli("diff", base, target, "-o", tmp_path / "p", *args)
    one_error_line(done, *words, code=2)
    assert not (tmp_path / "p").exists()


def test_server_codec_option_lists_the_valid_codecs(tmp_path):
    done = server("publish", "--repo", tmp_path / "repo", "--codec", "nosuch", run_paths()[0])
    one_error_line(done, "unknown codec 'nosuch'", "cm1", code=2)
    assert not (tmp_path / "repo").exists()


# -- item 3: -v/-q before or after the subcommand -----------------------------------------

@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_is_accepted_before_or_after_the_subcommand(pair, tmp_path, where):
    base, target, patch, _ = pair
    out = tmp_path / "out.pb.gz"
    args = ["apply", base, patch, "-o", out]
    done = cli(*(["-q", *args] if where == "before" else [*args, "-q"]))
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout == ""
    assert Net.load(out).id == pair[3]["target_id"]


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_tells_what_diff_and_apply_did(pair, tmp_path, where):
    base, _, patch, _ = pair
    args = ["apply", base, patch, "-o", tmp_path / "out.pb.gz"]
    done = cli(*(["-v", *args] if where == "before" else [*args, "--verbose"]))
    assert done.returncode == 0, done.stderr
    assert "read the base" in done.stderr and "rebuilt, checked and wrote the net in" in done.stderr
    assert cli(*args, "-f").stderr.count("\n") == 1      # without -v: the result line only


@pytest.mark.parametrize("command", [["fetch"], ["check"], ["inspect"]])
def test_verbose_is_accepted_after_any_subcommand(tmp_path, command):
    done = cli(*command, tmp_path / "nosuch", "-v", "--no-progress")
    assert done.returncode == 1, done.stderr          # a failure of the command, not a usage error
    assert "unrecognized arguments" not in done.stderr


def test_verbose_and_quiet_together_are_refused(pair):
    done = cli("-v", "inspect", pair[0], "-q")
    one_error_line(done, "-v/--verbose and -q/--quiet do not go together", code=2)


# -- item 8: --help shows a text and the default of every argument; --json -------------

def _parsers(parser, name):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def _continuation(lines, first):
    """The wrapped lines of the option entry starting at ``first``."""
    for line in lines[first + 1:]:
        if not line.startswith("    ") or line.lstrip().startswith("-"):
            return
        yield line


@pytest.mark.parametrize("module", ["lc0weights.cli", "service.cli"])
def test_every_argument_of_every_command_has_help_and_shows_its_default(module):
    import importlib
    parser = importlib.import_module(module).build_parser()
    checked = 0
    for name, p in _parsers(parser, parser.prog):
        text = p.format_help()
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help text"
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                flag = action.option_strings[-1]
                lines = text.splitlines()
                first = next(i for i, line in enumerate(lines)
                             if line.lstrip().startswith("-") and flag in line.split())
                entry = " ".join([lines[first], *_continuation(lines, first)])
                assert "default" in entry, f"{name}: {flag} does not show its default"
            checked += 1
    assert checked > 40


@pytest.mark.parametrize("args, shown", [
    (["serve", "--help"], ["(default: 8000)", "(default: 127.0.0.1)"]),
])
def test_server_help_shows_defaults(args, shown):
    done = server(*args)
    assert done.returncode == 0
    assert all(s in " ".join(done.stdout.split()) for s in shown), done.stdout


def test_fetch_help_shows_network_defaults():
    done = cli("fetch", "--help")
    text = " ".join(done.stdout.split())
    assert done.returncode == 0
    assert "(default: 30.0)" in text and "(default: 4)" in text and "user cache folder" in text


def test_json_from_diff_apply_and_verify_agree(pair, tmp_path):
    base, target, patch, made = pair
    assert made["mode"] == "lossless" and made["bytes"] == patch.stat().st_size
    assert made["target_id"] == made["result_id"]
    out = tmp_path / "out.pb.gz"
    applied = cli("apply", base, patch, "-o", out, "--json")
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout) == {"output": str(out), "net_id": made["target_id"]}
    verified = cli("verify", base, patch, target, "--json")
    assert verified.returncode == 0, verified.stderr
    record = json.loads(verified.stdout)
    assert record["ok"] is True and record["rebuilt_id"] == record["target_id"] == made["target_id"]
    wrong = cli("verify", base, patch, base, "--json")
    assert wrong.returncode == 1 and json.loads(wrong.stdout)["ok"] is False


# -- item 11: wording ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def lossy_diff(pair, tmp_path_factory):
    """``diff --tolerance 2^-10`` of the pair: the finished command and the patch it wrote."""
    base, target, _, _ = pair
    lossy = tmp_path_factory.mktemp("lossy") / "lossy"
    return cli("diff", base, target, "-o", lossy, "--tolerance", "2^-10"), lossy


def test_tolerances_that_keep_the_base_or_change_nothing_are_warned_about(pair, lossy_diff, tmp_path):
    base, target, _, _ = pair
    wide = cli("diff", base, target, "-o", tmp_path / "wide", "--tolerance", "100")
    assert wide.returncode == 0 and "warning: tolerance 100 is at least every weight's change" in wide.stderr
    tiny = cli("diff", base, target, "-o", tmp_path / "tiny", "--tolerance", "1e-99")
    assert tiny.returncode == 0 and "warning: tolerance 1e-99" in tiny.stderr
    assert "effectively lossless" in tiny.stderr
    usual, _ = lossy_diff
    assert usual.returncode == 0 and "warning" not in usual.stderr


def test_inspect_patch_names_the_tolerance_once_and_heads_its_layer_table(pair, lossy_diff):
    base, target, _, _ = pair
    made, lossy = lossy_diff
    assert made.returncode == 0, made.stderr
    done = cli("inspect", lossy)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].endswith(", tolerance 0.000976562)") and "tolerance, tolerance" not in lines[0]
    assert done.stdout.count("--base") == 1 and "needs the base" not in done.stdout
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["layer", "kind"])
    assert lines[header].split() == ["layer", "kind", "residual", "codec", "bytes"]
    assert lines[header + 1].split()[:2] == ["layer", "0"]
    named = cli("inspect", lossy, "--base", base)
    assert "--base" not in named.stdout and "weights.input.weights" in named.stdout


def test_counts_are_worded_in_the_singular_for_one(tmp_path):
    repo = tmp_path / "repo"
    published = server("publish", "--init", "--repo", repo, *run_paths()[:2])
    assert published.returncode == 0, published.stderr
    assert not re.search(r"\b1 (patches|nets|attempts)\b", published.stdout), published.stdout
    checked = cli("check", repo)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    m = re.search(r"checked (\d+) (nets?) and (\d+) (patch(?:es)?): ok", checked.stdout)
    assert m, checked.stdout
    assert (m[2] == "net") == (m[1] == "1") and (m[4] == "patch") == (m[3] == "1")
    pruned = server("prune", "--repo", repo, "--keep", "1")
    assert pruned.returncode == 0, pruned.stderr
    assert re.search(r"removed 1 net, \d+ patch", pruned.stdout), pruned.stdout


# -- item 3: progress on a terminal, nothing but results when piped ----------------------

def on_terminal(*args, module="lc0weights.cli", timeout=300) -> tuple[int, str]:
    """Run the command with stdin, stdout and stderr on a pseudo-terminal; its exit code and output."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time
    env = dict(os.environ, PYTHONPATH=str(ROOT), TERM="xterm")
    leader, follower = pty.openpty()
    # a terminal 24 rows by 100 columns: a fresh pty is 0 by 0, where bars have no room
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", module, *map(str, args)], env=env,
                            stdin=follower, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    output, deadline = bytearray(), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(leader, 1 << 16)
            except OSError:                # EIO: the terminal's last writer has gone
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(leader)
        code = proc.wait(timeout=30)
    return code, output.decode(errors="replace")


@pytest.mark.parametrize("command", ["diff", "apply"])
def test_progress_shows_on_a_terminal_and_not_in_a_pipe(pair, tmp_path, command):
    base, target, patch, _ = pair
    out = tmp_path / "out"
    args = ["diff", base, target, "-o", out] if command == "diff" else ["apply", base, patch, "-o", out]
    code, shown = on_terminal(*args)
    assert code == 0, shown
    bar = re.compile(r"(encoding|decoding):\s+\d+%\|")
    assert bar.search(shown), shown
    assert f"wrote {out}" in shown
    out.unlink()
    code, quiet = on_terminal(*args, "--no-progress")
    assert code == 0 and not bar.search(quiet) and f"wrote {out}" in quiet
    out.unlink()
    piped = cli(*args)
    assert piped.returncode == 0 and piped.stdout == ""
    assert piped.stderr.splitlines() == [piped.stderr.strip()] and piped.stderr.startswith(f"wrote {out}:")


def test_publish_shows_its_encoding_bar_on_a_terminal_only(tmp_path):
    bar = re.compile(r"encoding:\s+\d+%\|")
    code, shown = on_terminal("publish", "--init", "--repo", tmp_path / "shown", *run_paths()[:2], module="service.cli")
    assert code == 0, shown
    assert bar.search(shown) and "step-000100.pb.gz: 1 patch (" in shown, shown
    piped = server("publish", "--init", "--repo", tmp_path / "piped", *run_paths()[:2])
    assert piped.returncode == 0, piped.stderr
    assert not bar.search(piped.stdout + piped.stderr) and "step-000100.pb.gz: 1 patch (" in piped.stdout
    code, quiet = on_terminal("-q", "publish", "--init", "--repo", tmp_path / "quiet", *run_paths()[:2], module="service.cli")
    assert code == 0 and not bar.search(quiet), quiet


# -- item 2: the scripts install once, quietly -------------------------------------------

def _fake_checkout(tmp_path: Path) -> Path:
    """scripts/setup-venv and pyproject.toml in a folder whose .venv python records pip calls."""
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "setup-venv"
    script.write_bytes((ROOT / "scripts" / "setup-venv").read_bytes())
    script.chmod(0o755)
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nif [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "$@" >> "{tmp_path}/pip.log"; '
                      f'exit 0; fi\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return script


def test_setup_venv_installs_only_when_something_changed(tmp_path):
    script = _fake_checkout(tmp_path)
    log = tmp_path / "pip.log"

    def setup(*extras):
        done = subprocess.run([str(script), *extras], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        calls = log.read_text().count("install -q") if log.exists() else 0
        log.unlink(missing_ok=True)
        return calls, done.stdout + done.stderr

    calls, said = setup()
    assert calls == 2 and said.strip() == "installing lc0weights into .venv (once) ..."
    assert setup() == (0, "")                         # nothing changed: silent, no pip
    calls, said = setup("test")                       # a new extra installs
    assert calls == 2 and "[test]" in said
    assert setup("test") == (0, "") and setup() == (0, "")   # any extras include the runtime
    with open(tmp_path / "pyproject.toml", "a") as f:
        f.write("\n# changed\n")
    assert setup()[0] == 2                             # a changed pyproject installs again


@pytest.mark.slow
def test_demo_twice_installs_once_and_prints_no_warnings():
    runs = [subprocess.run([str(ROOT / "scripts" / "demo")], capture_output=True, text=True, timeout=900)
            for _ in range(2)]
    for done in runs:
        assert done.returncode == 0, done.stderr
    second = runs[1].stdout + runs[1].stderr
    assert "installing" not in second
    assert "warning" not in second.lower(), second
    assert "one net behind: downloaded" in second     # the figure the README says the demo prints


# -- item 10: benchmarks say what they need and leave docs/ alone unless asked ----------

@pytest.mark.parametrize("tool, needs", [("bench.py", "pip install -e '.[bench]'"),
                                         ("bench_temporal.py", "--no-nncodec"),
                                         ("temporal_limit.py", "run_info.json")])
def test_benchmark_help_says_what_it_needs_how_long_it_runs_and_where_it_writes(tool, needs):
    done = subprocess.run([sys.executable, str(ROOT / "tools" / tool), "--help"], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    text = " ".join(done.stdout.split())
    assert done.returncode == 0, done.stderr
    assert needs in text and re.search(r"Runs on 2 cores about \d+ (s|min)", text), text
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import importlib
        module = importlib.import_module(tool[:-3])
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert module.build_parser().parse_args([]).out is None      # no --out: nothing written into docs/
