"""Ed25519 keys: the operator's private key files and the public keys clients pin.

A public key travels as one line of text, ``ed25519:<base64 of the 32 raw
bytes>``: the string ``lc0weights-server keygen`` prints and ``--trust``
takes. A private key file is PKCS#8 PEM, created with mode 0600 and never
overwritten. Signing and verifying go through :class:`SigningKey` and
:class:`PublicKey` so the rest of the code never touches the crypto library.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..files import NotARegularFileError, read_small_file
from .errors import KeyFileError

PREFIX = "ed25519:"
MAX_KEY_FILE = 16 << 10


class PublicKey:
    """A pinned or listed Ed25519 public key."""

    def __init__(self, raw: bytes):
        if len(raw) != 32:
            raise KeyFileError(f"an Ed25519 public key has 32 bytes, not {len(raw)}")
        self.raw = bytes(raw)
        self._key = Ed25519PublicKey.from_public_bytes(self.raw)

    @classmethod
    def from_text(cls, text: str) -> "PublicKey":
        """Parse ``ed25519:<base64>``; the one-line form ``keygen`` prints."""
        text = text.strip()
        if not text.startswith(PREFIX):
            raise KeyFileError(f"not a public key: expected '{PREFIX}<base64>', "
                            f"as 'lc0weights-server keygen' prints, found {text[:24]!r}")
        try:
            raw = base64.b64decode(text[len(PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError(f"not a public key: the part after '{PREFIX}' is not base64") from None
        return cls(raw)

    @property
    def text(self) -> str:
        return PREFIX + base64.b64encode(self.raw).decode()

    @property
    def fingerprint(self) -> str:
        """A short, stable name for file names and messages (not used for trust)."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            self._key.verify(signature, message)
            return True
        except InvalidSignature:
            return False

    def __eq__(self, other) -> bool:
        return isinstance(other, PublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.text})"


class SigningKey:
    """An Ed25519 private key loaded from the operator's key file."""

    def __init__(self, key: Ed25519PrivateKey, path: str = ""):
        self._key = key
        self.path = path
        self.public = PublicKey(key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    @classmethod
    def generate(cls) -> "SigningKey":
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path) -> "SigningKey":
        path = Path(path)
        try:
            data = read_small_file(path, MAX_KEY_FILE, "key")
        except NotARegularFileError as e:
            raise KeyFileError(str(e)) from None
        except OSError as e:
            raise KeyFileError(f"{path}: cannot read the key file ({e.strerror})") from None
        if data.lstrip().startswith(PREFIX.encode()):
            raise KeyFileError(f"{path}: is a public key (ed25519:...); --key takes the private key file "
                               "'lc0weights-server keygen' wrote")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise KeyFileError(f"{path}: not an unencrypted PEM private key, as "
                               "'lc0weights-server keygen' writes") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{path}: not an Ed25519 key")
        return cls(key, str(path))

    def save(self, path) -> None:
        """Write the key to a new file, mode 0600; an existing file is never replaced."""
        pem = self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
        path = Path(path)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            raise KeyFileError(f"{path}: already exists; refusing to overwrite a key file") from None
        except OSError as e:
            raise KeyFileError(f"{path}: cannot create the key file ({e.strerror})") from None
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            path.unlink(missing_ok=True)
            raise KeyFileError(f"{path}: cannot write the key file ({e.strerror})") from None
        self.path = str(path)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def read_trust(value: str) -> PublicKey:
    """The key a client pins: the printed string itself, or ``@FILE`` holding it."""
    value = value.strip()
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            text = read_small_file(path, MAX_KEY_FILE, "public key").decode("ascii", errors="replace")
        except NotARegularFileError as e:
            raise KeyFileError(str(e)) from None
        except OSError as e:
            raise KeyFileError(f"{path}: cannot read the trusted key ({e.strerror})") from None
        if "PRIVATE KEY" in text:
            raise KeyFileError(f"{path}: is a private key; --trust takes the public key (ed25519:...) "
                               "'lc0weights-server keygen' printed, never the private key file")
        lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if len(lines) != 1:
            raise KeyFileError(f"{path}: expected one line 'ed25519:<base64>', found {len(lines)}")
        return PublicKey.from_text(lines[0])
    return PublicKey.from_text(value)
