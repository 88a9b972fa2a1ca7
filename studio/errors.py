"""User-facing errors: one line, no traceback, a non-zero exit."""


class StudioError(Exception):
    """An error whose message is meant for the user as it is."""


class InputError(StudioError, ValueError):
    """The user's input (spec, file, parameter) is invalid."""


class NotFound(StudioError, LookupError):
    """A named thing (backend, model, vector, job) does not exist."""


class Cancelled(StudioError):
    """The job was cancelled while it ran."""


MAX_MESSAGE_CHARS = 290  # a message shown to users (a job's error or message, an event) is one line under 300


def clip(value: object, limit: int = 60) -> str:
    """`value` as one line of at most `limit` characters: newlines folded; a longer text is cut and ends with
    "... (N characters)" (its full length), or with a bare "..." where `limit` leaves too little room for that."""
    text = " ".join(str(value).split())
    if len(text) <= limit:
        return text
    suffix = f"... ({len(text)} characters)"
    if limit - len(suffix) < max(8, limit // 3):  # keep at least a readable head of the text
        suffix = "..."[:max(limit, 0)]
    return text[:max(limit - len(suffix), 0)] + suffix
