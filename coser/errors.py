"""Errors a user can act on. Scripts print them as one line and exit non-zero."""


class CoserError(Exception):
    """A problem with input, configuration or an endpoint, reported as one line (no traceback)."""

    exit_code = 2


class ConfigError(CoserError):
    """A setting is missing or wrong; the message names the setting to fill."""


class InputError(CoserError):
    """Bad input file, line or field; the message names where."""


class OutputError(CoserError):
    """An output (or cache) file could not be written; the message names the file and the cause.

    errno keeps the OS error number (None if not from the OS), e.g. for a caller that retries ENOENT.
    """

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


class LLMError(CoserError):
    """An LLM call failed for good (after the bounded retries, or at once for permanent errors)."""


class LLMPermanentError(LLMError):
    """401 / 404 / 400-style failures: retrying cannot help, the run should stop."""


class LLMUnavailable(LLMError):
    """Transient failures outlasted the retry bound (endpoint down, rate limited for too long)."""


class BudgetExceeded(CoserError):
    """--max_cost was reached: no new LLM work is started; rerun to resume."""

    exit_code = 3


class Interrupted(BaseException):
    """Raised in worker threads for an LLM call asked after Ctrl-C: no new call starts while the run stops.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way records it as a
    failed sample or retries it.
    """


class BatchExported(CoserError):
    """--batch_export wrote the pending requests: the run stops here, to resume with --batch_import."""

    exit_code = 0
