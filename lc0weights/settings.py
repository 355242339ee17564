"""Options people set once: from the command line, else the environment, else a config file.

The config file is INI, ``$LC0WEIGHTS_CONFIG`` or
``$XDG_CONFIG_HOME/lc0weights/config`` (``~/.config/lc0weights/config``)::

    [lc0weights]
    trust = ed25519:...        # or @/path/to/key.pub
    cache = /var/cache/lc0weights
    url = https://nets.example.org/repo/
    prefer = time              # fetch routes by least time, or: bytes

Environment variables: ``LC0WEIGHTS_TRUST``, ``LC0WEIGHTS_CACHE``,
``LC0WEIGHTS_URL``, ``LC0WEIGHTS_PREFER``. A value given on the command line
always wins.
"""
from __future__ import annotations

import argparse
import configparser
import math
import os
import re
from pathlib import Path

from .errors import Lc0WeightsError
from .files import NotARegularFileError, read_small_file

SECTION = "lc0weights"
NAMES = ("trust", "cache", "url", "prefer")
PREFER_CHOICES = ("time", "bytes")
DEFAULT_PREFER = "time"      # docs/REPOSITORY.md "Client route" says why
MAX_CONFIG = 1 << 20


def config_path() -> Path:
    explicit = os.environ.get("LC0WEIGHTS_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "lc0weights" / "config"


def _config() -> dict:
    path = config_path()
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#",))
    try:
        text = read_small_file(path, MAX_CONFIG, "config").decode("utf-8")
        parser.read_string(text, source=str(path))
    except FileNotFoundError:
        return {}
    except NotARegularFileError as e:
        raise Lc0WeightsError(f"{e} (LC0WEIGHTS_CONFIG or the default config path)") from None
    except (OSError, UnicodeDecodeError, configparser.Error) as e:
        raise Lc0WeightsError(f"{path}: cannot read the config file ({str(e).splitlines()[0]})") from None
    if not parser.has_section(SECTION):
        return {}
    unknown = set(parser[SECTION]) - set(NAMES)
    if unknown:
        raise Lc0WeightsError(f"{path}: unknown setting {sorted(unknown)[0]!r} (known: {', '.join(NAMES)})")
    return dict(parser[SECTION])


def setting(name: str, given=None):
    """``given`` when set, else ``LC0WEIGHTS_<NAME>``, else the config file's value, else None."""
    if given is not None:
        return given
    value = os.environ.get(f"LC0WEIGHTS_{name.upper()}")
    if value:
        return value
    return _config().get(name) or None


def prefer_setting(given: str | None = None) -> str:
    """How ``fetch`` weighs routes: ``given``, else the environment or config file, else time."""
    if given is not None:
        return given
    value = os.environ.get("LC0WEIGHTS_PREFER")
    where = "LC0WEIGHTS_PREFER"
    if not value:
        value, where = _config().get("prefer"), f"'prefer' in {config_path()}"
    if not value:
        return DEFAULT_PREFER
    value = value.strip().lower()
    if value not in PREFER_CHOICES:
        raise Lc0WeightsError(f"{where}: prefer must be {' or '.join(PREFER_CHOICES)}, not {value!r}")
    return value


def parse_tolerance(text: str) -> float:
    """``2^-17``, ``2**-17`` or a decimal such as ``7.6e-6``: the one parser every command uses."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(?:\^|\*\*)\s*(-?\d+)\s*", text)
    try:
        value = float(m.group(1)) ** int(m.group(2)) if m else float(text)
    except (ValueError, OverflowError):
        value = float("nan")
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"tolerance must be a positive number like 2^-17, not {text!r}")
    return value


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds from ``90s``, ``30m``, ``12h``, ``7d``, ``2w`` or a bare number of seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smhdw]?)\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration like 7d, 12h or 30m, not {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]
