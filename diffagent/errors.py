"""Errors a caller can act on. Every message says what was wrong and what to do instead."""


class DiffAgentError(Exception):
    """Base class: the message is meant for the user (CLI) or the calling agent (MCP isError)."""


class UserInputError(DiffAgentError, ValueError):
    """The request itself is invalid (bad option, unknown id, malformed file)."""


class NotFoundError(UserInputError, LookupError):
    """An id or name that the registry does not hold."""


class ImportFailed(DiffAgentError):
    """An import was rolled back; the registry is unchanged."""


class MissingDependency(DiffAgentError, ImportError):
    """An optional extra is not installed."""

    def __init__(self, package: str, extra: str, how: str | None = None):
        super().__init__(
            f"{package} is not installed; " + (how or f"install the '{extra}' extra: pip install 'diffagent[{extra}]'")
        )
