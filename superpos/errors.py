"""The one exception type users see.

Anything raised as :class:`SuperposError` is a problem with the user's input or environment
(bad path, wrong flag, incompatible file). The CLI prints its message on one line to stderr and
exits with code 2; everything else is a bug and keeps its traceback.
"""


class SuperposError(Exception):
    """A user-facing error with a one-line message."""


class ConfigError(SuperposError):
    """A setting that cannot be used, raised for one field of a config dataclass.

    ``message`` writes ``{field}`` where the setting is named: read from the library it names the config field
    (``expansions must be positive numbers``); the CLI shows the same message with the field's flag instead
    (``--expansions must be positive numbers``).
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.template = message
        super().__init__(self.naming(field))

    def naming(self, name: str) -> str:
        """The message with the setting called ``name`` (e.g. its command-line flag). Only ``{field}`` is
        replaced: the message quotes what the user typed, braces and all (``str.format`` would read them)."""
        return self.template.replace("{field}", name)
