"""Serving over HTTP on the client's side: the mirror lczero-client fetches through."""
