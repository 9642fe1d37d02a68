"""Errors a user can act on. Scripts print them as one line and exit non-zero."""


class CoserError(Exception):
    """A problem with input, configuration or an endpoint, reported as one line (no traceback)."""

    exit_code = 2


class ConfigError(CoserError):
    """A setting is missing or wrong; the message names the setting to fill."""


class InputError(CoserError):
    """Bad input file, line or field; the message names where."""


class LLMError(CoserError):
    """An LLM call failed for good (after the bounded retries, or at once for permanent errors)."""


class LLMPermanentError(LLMError):
    """401 / 404 / 400-style failures: retrying cannot help, the run should stop."""


class LLMUnavailable(LLMError):
    """Transient failures outlasted the retry bound (endpoint down, rate limited for too long)."""


class BudgetExceeded(CoserError):
    """--max_cost was reached: no new LLM work is started; rerun to resume."""

    exit_code = 3
