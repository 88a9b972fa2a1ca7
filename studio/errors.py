"""User-facing errors: one line, no traceback, a non-zero exit."""


class StudioError(Exception):
    """An error whose message is meant for the user as it is."""


class InputError(StudioError, ValueError):
    """The user's input (spec, file, parameter) is invalid."""


class NotFound(StudioError, LookupError):
    """A named thing (backend, model, vector, job) does not exist."""


class Cancelled(StudioError):
    """The job was cancelled while it ran."""
