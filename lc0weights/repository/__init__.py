"""The published repository's format, read by clients and written by the publisher.

Documents (root, timestamp, records) and their Ed25519 keys (``metadata``,
``keys``), strict reading of untrusted JSON (``strict``), the patch and net
entries (``index``), and the client's checks in order (``updater``).
"""
