"""Lists of numbers typed by a person ('0-7', '1,3,5', '0.5, 1'), shared by the CLI and the UI.

Every list is bounded by Settings.max_spec_items (STUDIO_MAX_SPEC_ITEMS) before it is built, and every refusal is
one InputError line naming the field (`what`).
"""

from __future__ import annotations

from studio.errors import InputError, clip


def _max_items() -> int:
    from studio.config import load_settings

    return load_settings().max_spec_items


def parse_floats(text: str, what: str) -> list[float]:
    """'0.5, 1, 2' -> list of floats (at most Settings.max_spec_items of them)."""
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated numbers, got {clip(text)!r}") from None
    if len(out) > (limit := _max_items()):
        raise InputError(f"{what}: at most {limit} numbers, got {len(out)} (STUDIO_MAX_SPEC_ITEMS)")
    return out


def parse_ints(text: str, what: str) -> list[int]:
    """'0-7' or '1,3,5' or '0-3,8' -> list of ints (at most Settings.max_spec_items of them)."""
    limit = _max_items()
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else ("-" + part[1:].split("-", 1)[0],
                                                                             part[1:].split("-", 1)[1])
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                if len(out) + (b - a + 1) > limit:  # refused before the range is built
                    raise InputError(f"{what}: at most {limit} numbers, got {len(out) + b - a + 1} or more "
                                     "(STUDIO_MAX_SPEC_ITEMS)")
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
            if len(out) > limit:
                raise InputError(f"{what}: at most {limit} numbers, got more (STUDIO_MAX_SPEC_ITEMS)")
    except InputError:
        raise
    except ValueError:
        raise InputError(f"{what} must look like '0-7' or '1,3,5', got {clip(text)!r}") from None
    if not out:
        raise InputError(f"{what} is empty")
    return out
