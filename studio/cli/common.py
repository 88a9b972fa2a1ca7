"""Helpers the CLI modules share: option parsing, image inputs, output, progress bars."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

from studio.errors import InputError, clip
from studio.parsing import parse_floats as parse_floats  # moved to the core; kept importable here
from studio.parsing import parse_ints as parse_ints


def check_name(value: str, what: str) -> str:
    """A backend, kind or model name from the command line: refused in one short line when it cannot be one."""
    if len(value) > 64 or not value.strip():
        raise InputError(f"{what}: names have 1 to 64 characters, got {clip(value, 40)!r}")
    return value


def parse_option_pairs(pairs: list[str] | None, flag: str = "--option") -> dict[str, Any]:
    """KEY=VALUE pairs of a repeatable `flag`; VALUE is parsed as JSON when it can be, else kept as a string."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise InputError(f"{flag} takes KEY=VALUE, got {clip(pair)!r}")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def image_ref(path: str | None, what: str = "image") -> dict | None:
    """Read a user's image file into an inline ImageRef (the worker never reads user paths).

    Its size in bytes and its width x height are checked from the header before it is read whole; nothing is
    decoded here. `dataset:NAME:SPLIT:INDEX` (e.g. dataset:mnist:test:3) refers to a dataset image instead.
    """
    if path is None:
        return None
    if path.startswith("dataset:"):
        parts = path.split(":")
        if len(parts) != 4 or not parts[3].isdigit():
            raise InputError(f"dataset images look like dataset:mnist:test:3, got {clip(path)!r}")
        return {"dataset": parts[1], "split": parts[2], "index": int(parts[3])}
    from studio.config import load_settings
    from studio.images import check_image_header

    settings = load_settings()
    check_image_header(path, settings.max_upload_pixels, settings.max_upload_bytes, what=what)
    return {"png_b64": base64.b64encode(Path(path).read_bytes()).decode("ascii")}


def source(seed: int | None, image: str | None, what: str, options: dict | None = None) -> dict:
    if (seed is None) == (image is None):
        raise InputError(f"give {what} as a seed or an image (one of them)")
    out: dict[str, Any] = {"seed": seed} if seed is not None else {"image": image_ref(image)}
    if options:
        out["options"] = options
    return out


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


class Bar:
    """A tqdm progress bar on stderr that accepts the contract's progress(step, total, message) calls."""

    def __init__(self, desc: str, force: bool = False) -> None:
        self.desc = desc
        self.enabled = force or sys.stderr.isatty()
        self._bar = None

    def __call__(self, step: int, total: int, message: str = "", preview: object = None) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self._bar is None or total != self._bar.total or step < self._bar.n:  # a new phase: a new bar
            self.close()
            self._bar = tqdm(total=total, desc=self.desc, file=sys.stderr, leave=False)
        if message:  # the message changes every step (losses): update it in place, keeping rate and ETA
            self._bar.set_description_str(f"{self.desc}: {message}", refresh=False)
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
