"""Domain errors.

Every error a user can cause derives from :class:`LookalikeError`; entry points print its message
and exit with :attr:`LookalikeError.exit_code` instead of a stack trace.
"""


class LookalikeError(Exception):
    """A problem the user can fix; the message says what and how."""

    exit_code = 2


class ConfigError(LookalikeError):
    """The configuration is invalid (unknown key, wrong type, missing value)."""


class InputError(LookalikeError):
    """The input cannot be listed or is inconsistent (for example duplicate item ids)."""


class DuplicateItemIdError(InputError):
    """Two input keys map to the same item id."""


class WeightsError(LookalikeError):
    """Model weights cannot be obtained or do not match their published checksum."""


class SchemaMismatchError(LookalikeError):
    """A table mixes embeddings that cannot be compared (dimension, model, pooling)."""


class TooManyErrorsError(LookalikeError):
    """The share of failed images exceeds ``input.max_error_fraction``; nothing was published."""


class OutputLockedError(LookalikeError):
    """Another run holds the lock on an output location."""


class OutputError(LookalikeError):
    """An output location holds something the jobs will not overwrite (a foreign file or layout)."""


class ItemNotFoundError(LookalikeError):
    """A queried item id is not in the table."""


class ClusterEnvironmentError(LookalikeError):
    """Executors cannot run lookalike: their Python lacks the package or its dependencies."""
