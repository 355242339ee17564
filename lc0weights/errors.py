"""The exceptions lc0weights raises, named by what the caller should do next.

Every error the library raises on bad input derives from :class:`Lc0WeightsError`
(a ``ValueError``), so a caller can catch one type; the command line turns
each into a one-line message and a non-zero exit.
"""


class Lc0WeightsError(ValueError):
    """Base of every error lc0weights raises for bad input or failed checks."""


class NetFormatError(Lc0WeightsError):
    """The bytes are not an lc0 network (not protobuf, no magic, bad gzip)."""


class PatchFormatError(Lc0WeightsError):
    """The patch is truncated, corrupt, or of a version this build cannot read."""


class WrongBaseError(Lc0WeightsError):
    """The patch was made for another base net than the one given."""


class MissingHistoryError(Lc0WeightsError):
    """The patch needs a second earlier net as context and it was not given."""


class VerificationError(Lc0WeightsError):
    """A rebuilt net does not match what the patch promised."""


class UnknownCodecError(Lc0WeightsError):
    """A codec id that is not registered in this build."""

    def __init__(self, codec_id):
        super().__init__(f"unknown codec id {codec_id!r}; this build cannot decode it")
        self.codec_id = codec_id
