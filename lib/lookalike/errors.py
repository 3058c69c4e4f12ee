"""Domain errors and the exit statuses they become: the one place that maps failures to codes.

Every failure the jobs and tools expect derives from :class:`LookalikeError`; entry points print
its message as one line and exit with its :attr:`~LookalikeError.exit_code`. The contract for
schedulers (docs/scheduled-runs.md):

- ``EXIT_OK`` 0: published, or nothing changed;
- ``EXIT_USER`` 2: a mistake the user can fix (config, input, a refused location); retrying the
  same run fails the same way;
- ``EXIT_TRANSIENT`` 75 (sysexits' EX_TEMPFAIL): storage, catalog or network failed after the
  configured retries; nothing that was not already committed is published; retry later;
- ``EXIT_BUG`` 1: anything else, an unexpected exception: a bug, logged with its traceback.
"""

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USER = 2
EXIT_TRANSIENT = 75


class LookalikeError(Exception):
    """A problem the user can fix; the message says what and how."""

    exit_code = EXIT_USER


class TransientError(LookalikeError):
    """Storage, a catalog or the network failed after the configured retries: try again later."""

    exit_code = EXIT_TRANSIENT


class ConfigError(LookalikeError):
    """The configuration is invalid (unknown key, wrong type, missing value)."""


class InputError(LookalikeError):
    """The input cannot be listed or is inconsistent (for example duplicate item ids)."""


class InputUnavailableError(TransientError, InputError):
    """The input could not be read because its storage kept failing (S3 5xx, timeouts)."""


class DuplicateItemIdError(InputError):
    """Two input keys map to the same item id."""


class WeightsError(LookalikeError):
    """Model weights cannot be obtained or do not match their published checksum."""


class WeightsUnavailableError(TransientError, WeightsError):
    """The weights' storage kept failing."""


class SchemaMismatchError(LookalikeError):
    """A table mixes embeddings that cannot be compared (dimension, model, pooling)."""


class TooManyErrorsError(LookalikeError):
    """The share of failed images exceeds ``input.max_error_fraction``; nothing was published."""


class OutputError(LookalikeError):
    """An output location holds something the jobs will not overwrite (a foreign file or layout)."""


class OutputUnavailableError(TransientError, OutputError):
    """An output could not be written or published because its storage kept failing."""


class ItemNotFoundError(LookalikeError):
    """A queried item id is not in the table."""


class ClusterEnvironmentError(LookalikeError):
    """Executors cannot run lookalike: their Python lacks the package or its dependencies."""


_TRANSIENT = {
    InputError: InputUnavailableError,
    OutputError: OutputUnavailableError,
    WeightsError: WeightsUnavailableError,
}


def storage_failure(error: type[LookalikeError], message: str, cause: BaseException) -> LookalikeError:
    """``error(message)``, or its transient variant when ``cause`` (a StorageError) says that trying
    again later may succeed."""
    if getattr(cause, "transient", False):
        return _TRANSIENT.get(error, TransientError)(message)
    return error(message)
