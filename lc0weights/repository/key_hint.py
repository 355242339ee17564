"""The hint for a common pinning mistake: ``--trust`` given an online signing key, not the root key.

A repository's root.json is signed by its root key and lists the online keys
that sign its timestamp; a client pins the root key. Pinning the online key
instead (it is the one ``keygen`` printed for ``publish --key``) makes every
root check fail, and the plain refusal does not say why. Whoever refuses a
root (:class:`.updater.Updater`, and so ``fetch``, ``fetch --follow`` and
``check``) words the hint here, so all of them say the same thing.
"""
from __future__ import annotations

from ..errors import Lc0WeightsError
from .keys import PublicKey
from .metadata import Envelope, parse_root


def online_key_hint(key: PublicKey | None, root: Envelope, timestamp: Envelope | None) -> str:
    """`` (...)`` to add to a root refusal when ``key`` is an online key of the repository, else "".

    The root here failed its checks, so it is read unverified, only to word the
    message. Two things keep a forged root from steering the user to another
    key: the hint is given only when the timestamp carries a valid signature by
    the pinned key (so the key really signs as an online key; an offline root
    key never does), and it tells the user to confirm the named root key with
    the publisher rather than take it from this message.
    """
    if key is None or timestamp is None or timestamp.signed_by([key]) is None:
        return ""
    try:
        claimed = parse_root(root)
    except Lc0WeightsError:
        return ""
    if key not in claimed.online_keys or key in claimed.root_keys:
        return ""
    return (" (the pinned key is an online signing key of this repository; --trust takes its root key, "
            f"which root.json names as {claimed.root_keys[0].text}: confirm it with the publisher)")
