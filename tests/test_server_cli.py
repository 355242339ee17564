"""The operator's command line: mistakes are refused or warned about, with one clear line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NETS, run_paths
from repo_fixtures import FAST_CODEC

ROOT = Path(__file__).resolve().parents[1]


def server_cli(*args, timeout=180):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "service.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(done, *words):
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1, done.stderr
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize("command", [["serve", "--repo"], ["prune", "--keep", "2", "--repo"],
                                     ["resign", "--repo"]])
def test_commands_on_a_missing_repository_refuse_and_create_nothing(tmp_path, command):
    missing = tmp_path / "nosuchdir"
    one_error_line(server_cli(*command, missing), "no such repository folder")
    assert not missing.exists()


def test_watch_on_a_missing_incoming_folder_refuses(tmp_path):
    done = server_cli("watch", "--incoming", tmp_path / "nosuch", "--repo", tmp_path / "repo", "--once")
    one_error_line(done, "no such folder to watch")
    assert not (tmp_path / "repo").exists()


def test_bad_port_and_keep_values_are_usage_errors(tmp_path):
    done = server_cli("serve", "--repo", tmp_path, "--port", "99999")
    assert done.returncode == 2 and "65535" in done.stderr and "Traceback" not in done.stderr
    done = server_cli("prune", "--repo", tmp_path, "--keep", "-1")
    assert done.returncode == 2 and "at least 1" in done.stderr


def test_version():
    done = server_cli("--version")
    assert done.returncode == 0 and done.stdout.startswith("lc0weights-server ")


def test_publishing_out_of_training_order_is_refused_unless_asked(tmp_path):
    repo = tmp_path / "repo"
    paths = run_paths()
    assert server_cli("publish", "--init", "--repo", repo, "--codec", FAST_CODEC, paths[2]).returncode == 0
    one_error_line(server_cli("publish", "--repo", repo, "--codec", FAST_CODEC, paths[1]),
                   "training step", "--allow-older")
    done = server_cli("publish", "--repo", repo, "--codec", FAST_CODEC, "--allow-older", paths[1])
    assert done.returncode == 0 and "1 patch " in done.stdout


def test_publishing_an_unrelated_net_warns_and_ships_no_patch_dearer_than_the_net(tmp_path):
    repo = tmp_path / "repo"
    # The baseline codec: its patch from an unrelated net is dearer than the net (rans1's is not).
    codec = "varint-brotli"
    assert server_cli("publish", "--init", "--repo", repo, "--codec", codec, run_paths()[0]).returncode == 0
    done = server_cli("publish", "--repo", repo, "--codec", codec, "--allow-older", "--json",
                      NETS / "meangirl-8.pb.gz")
    assert done.returncode == 0, done.stderr
    assert "shares little with the net before it" in done.stderr
    assert '"patches": []' in done.stdout
