"""The coding tiers a patch may be made in, by name ("cm" first: the default). Which codecs
each tier uses is the encoder's (``patching.encode.TIER_CODECS``); this list is what
settings, the CLI and the repository format read without loading any codec."""
TIERS = ("cm", "fast")
