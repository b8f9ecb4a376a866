"""The one exception type users see.

Anything raised as :class:`SuperposError` is a problem with the user's input or environment
(bad path, wrong flag, incompatible file). The CLI prints its message on one line to stderr and
exits with code 2; everything else is a bug and keeps its traceback.
"""


class SuperposError(Exception):
    """A user-facing error with a one-line message."""
