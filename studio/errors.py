"""User-facing errors: one line, no traceback, a non-zero exit."""


class StudioError(Exception):
    """An error whose message is meant for the user as it is."""


class InputError(StudioError, ValueError):
    """The user's input (spec, file, parameter) is invalid."""


class NotFound(StudioError, LookupError):
    """A named thing (backend, model, vector, job) does not exist."""


class Cancelled(StudioError):
    """The job was cancelled while it ran."""


def clip(value: object, limit: int = 60) -> str:
    """`value` as one short line for a message: newlines folded, cut to `limit` characters with its full length."""
    text = " ".join(str(value).split())
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
