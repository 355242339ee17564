"""What the command lines share: progress bars, counted nouns and the output check.

Library code shows bars through here, so one switch (``SHOW_PROGRESS``, set from
``--no-progress`` and ``-q``) turns every bar off.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import Lc0WeightsError

NO_BASE = "none"


SHOW_PROGRESS = True   # the command line's --no-progress and -q turn every bar off


def progress_bar(chunks, total: int, initial: int, desc: str, enabled: bool = True):
    """Wrap a chunk iterator in a tqdm bar; plain iteration when not on a terminal."""
    if not (enabled and SHOW_PROGRESS) or not sys.stderr.isatty():
        yield from chunks
        return
    from tqdm import tqdm
    with tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=desc,
              leave=False, file=sys.stderr) as bar:
        for chunk in chunks:
            bar.update(len(chunk))
            yield chunk


def counting_bar(items, total: int, desc: str, unit: str = "layer"):
    """Wrap an iterator in a tqdm bar counting its items; plain iteration when not on a terminal."""
    if not SHOW_PROGRESS or not sys.stderr.isatty():
        yield from items
        return
    from tqdm import tqdm
    with tqdm(total=total, unit=unit, desc=desc, leave=False, file=sys.stderr) as bar:
        for item in items:
            bar.update(1)
            yield item


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {many or word + 's'}"


def check_output(output: str, inputs=(), force: bool = False) -> None:
    """Refuse an output that would fail or destroy something, before any work is done.

    The folder must exist (the error names the user's path, not a temp file);
    an input is never overwritten, even with --force; an existing file needs
    --force, as gzip and zstd ask.
    """
    out = Path(output)
    folder = out.parent
    if not folder.is_dir():
        raise Lc0WeightsError(f"{output}: cannot write: folder {str(folder)!r} does not exist")
    if out.is_dir():
        raise Lc0WeightsError(f"{output}: is a folder; give a file name")
    if not out.exists():
        return
    for given in inputs:
        if given and given.lower() != NO_BASE and Path(given).exists() and os.path.samefile(out, given):
            raise Lc0WeightsError(f"{output}: is also an input ({given}); write the output elsewhere")
    if not force:
        raise Lc0WeightsError(f"{output}: already exists (use -f/--force to overwrite)")
