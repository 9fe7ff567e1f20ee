"""The project's exception hierarchy.

Every error a user can cause derives from :class:`UserInputError`; the CLI maps
it to one line on stderr and exit code 2. Anything else is a bug and keeps its
traceback.
"""


class BSConvExportError(Exception):
    """Base class for errors raised on purpose by this project."""


class UserInputError(BSConvExportError, ValueError):
    """Bad input: an unknown name, an unreadable file, an impossible option."""


class UnknownModelError(UserInputError, KeyError):
    """A model name that the registry does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(UserInputError):
    """A checkpoint that cannot be read or does not fit the architecture."""


class StageError(BSConvExportError):
    """A pipeline stage (export, simplify, convert, check) failed."""
