"""The grid op: an X/Y/Z plot of any op over two or three of its parameters, as one job.

A grid is a base spec (any op but grid) and up to three axes. Each axis sets one parameter: a field of the base op
(`seed`, `temperature`, `n`, `model`, ...) or a backend option (`options.prompt`, or just `prompt` when the op has
no such field), to a list of values, to the prompts of a prompt matrix (`"a cat|red|watercolour"`: the first part
with every subset of the others, 2^(n-1) prompts), or to `batch_count` batches of seeds (seed, seed + n, ...).

Every cell is a complete spec of the base op, validated when the grid is (an unknown parameter or a bad value is
one line naming the axis). The cells run in the grid's job with its loaded backend; each cell's PNGs carry the
cell's own record (so any one replays alone as a normal job), and `grid.png` (`grid_z{k}.png` with a Z axis) shows
one tile per cell, labelled `param=value` along the top and left. Nothing here imports torch at import.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from studio.errors import InputError, StudioError, clip
from studio.spec import MAX_LIST, OpSpec

if TYPE_CHECKING:
    from PIL import Image

    from studio.executor import JobContext

AXES = ("x", "y", "z")
MAX_MATRIX_PARTS = 11  # a prompt matrix of at most 2^10 = 1024 prompts
MAX_CELLS = 4096
RESERVED = ("op", "backend", "options")  # parameters an axis may not set
TILE_MIN = 128  # tiles narrower than this are scaled up (nearest) so their labels fit
LABEL_PX = 14


def prompt_matrix(text: str) -> list[str]:
    """The prompts of a prompt matrix: `"a cat|red|watercolour"` -> the first part alone and with every subset of
    the others, in binary order: "a cat", "a cat, red", "a cat, watercolour", "a cat, red, watercolour"."""
    parts = [p.strip() for p in text.split("|")]
    if len(parts) < 2 or not any(parts[1:]):
        raise ValueError("a prompt matrix has at least two parts separated by '|' (\"a cat|red|watercolour\")")
    if len(parts) > MAX_MATRIX_PARTS:
        raise ValueError(f"a prompt matrix has at most {MAX_MATRIX_PARTS} parts "
                         f"({2 ** (MAX_MATRIX_PARTS - 1)} prompts), got {len(parts)}")
    head, rest = parts[0], parts[1:]
    out = []
    for mask in range(2 ** len(rest)):
        chosen = [head] if head else []
        chosen += [p for j, p in enumerate(rest) if mask >> j & 1 and p]
        out.append(", ".join(chosen))
    return out


def parse_value(text: str) -> Any:
    """A value typed by a person: JSON when it parses (1, 0.5, true, {"seed": 3}), else the text itself."""
    import json

    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def axis_from_text(text: str, what: str) -> dict:
    """`"seed=1,2,3"` (or `"prompt=a cat|a dog, red"`: '|' separates the values when there is one) as an axis
    dict; InputError naming `what` (the flag or field) otherwise."""
    param, sep, rest = text.partition("=")
    if not sep or not param.strip() or not rest.strip():
        raise InputError(f"{what} takes PARAM=V1,V2,... (e.g. seed=1,2,3), got {clip(text)!r}")
    parts = rest.split("|") if "|" in rest else rest.split(",")
    values = [parse_value(p) for p in parts if p.strip()]
    if not values:
        raise InputError(f"{what}: no values in {clip(text)!r}")
    return {"param": param.strip(), "values": values}


def add_axis(spec: dict, axis: dict, what: str) -> None:
    """Put `axis` on the first free axis (x, y, z) of a grid spec dict; InputError naming `what` when all three are
    taken."""
    free = next((a for a in AXES if spec.get(a) is None), None)
    if free is None:
        raise InputError(f"{what}: a grid has at most three axes (x, y and z are taken)")
    spec[free] = axis


class Axis(BaseModel):
    """One axis of a grid: the parameter it sets and its values (a list, a prompt matrix or a batch count)."""

    model_config = ConfigDict(extra="forbid")
    param: str = Field(default="seed", min_length=1, max_length=72)
    values: list[Any] | None = Field(default=None, min_length=1, max_length=MAX_LIST)
    matrix: str | None = Field(default=None, max_length=10_000)
    batch_count: int | None = Field(default=None, ge=1, le=MAX_CELLS)

    @model_validator(mode="after")
    def _one_kind(self) -> Axis:
        given = [k for k in ("values", "matrix", "batch_count") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of values, matrix (a prompt matrix) or batch_count")
        return self


@dataclass
class Cell:
    """One cell of a grid: its position (one index per axis), the values it sets and its spec."""

    index: int
    at: tuple[int, ...]
    values: dict[str, Any]  # axis name -> value
    spec: OpSpec

    def label(self, axes: dict[str, tuple[str, list]]) -> str:
        return ", ".join(f"{axes[a][0]}={_short(v)}" for a, v in self.values.items())


def _short(value: object, limit: int = 40) -> str:
    return clip(value, limit)


def _target(param: str, op: type[OpSpec]) -> tuple[str, str]:
    """Where an axis parameter goes: ("field", name) or ("option", name)."""
    if param.startswith("options."):
        return "option", param.removeprefix("options.")
    if param in op.model_fields and param not in RESERVED:
        return "field", param
    return "option", param


def _option_names(backend: str) -> set[str] | None:
    """The backend's option names, or None when they cannot be told here (unknown backend, open options)."""
    try:
        from studio.registry import get_backend_class

        options = get_backend_class(backend).Options
    except Exception:  # the spec's own backend check names the problem
        return None
    if options.model_config.get("extra") != "forbid":
        return None
    return set(options.model_fields)


def _first_error(exc: ValidationError) -> tuple[str, str]:
    """(the top-level field, "loc: message") of a validation error's first problem."""
    e = exc.errors(include_input=False, include_url=False)[0]
    loc = ".".join(str(x) for x in e["loc"])
    return (str(e["loc"][0]) if e["loc"] else ""), f"{loc}: {clip(e['msg'].removeprefix('Value error, '), 100)}"


class GridSpec(OpSpec):
    """An X/Y/Z plot: the base op run once per combination of the axes' values, in one job; a labelled grid."""

    op: Literal["grid"] = "grid"
    base: dict[str, Any] = Field(default_factory=lambda: {"op": "sample"})
    x: Axis
    y: Axis | None = None
    z: Axis | None = None

    _cells: list[Cell] = PrivateAttr(default_factory=list)
    _axes: dict[str, tuple[str, list]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _build(self) -> GridSpec:
        from studio.registry import get_op

        if self.z is not None and self.y is None:
            raise ValueError("z: a Z axis needs a Y axis")
        base = dict(self.base)
        name = base.pop("op", "sample")
        if not isinstance(name, str):
            raise ValueError("base.op: the base op's name is text")
        if name == "grid":
            raise ValueError("base.op: a grid's cells cannot be grids")
        try:
            op = get_op(name)
        except StudioError as exc:
            raise ValueError(f"base.op: {exc}") from None
        for key in ("backend", "model"):
            if key in base and base[key] != getattr(self, key):
                raise ValueError(f"base.{key}: the cells use the grid's own {key}; set it on the grid")
            base.pop(key, None)
        options = base.pop("options", None) or {}
        if not isinstance(options, dict):
            raise ValueError("base.options: an object of backend options")
        axes = {a: getattr(self, a) for a in AXES if getattr(self, a) is not None}
        known = _option_names(self.backend)
        resolved: dict[str, tuple[str, str, list]] = {}
        for a, axis in axes.items():
            kind, key = _target(axis.param, op)
            if kind == "option" and op.backend_options and known is not None and key not in known:
                fields = [f for f in op.model_fields if f not in (*RESERVED, "model", "webhook")]
                hint = clip(f"{name} fields: {', '.join(fields) or 'none'}; {self.backend} options: "
                            f"{', '.join(sorted(known)) or 'none'}", 80)
                raise ValueError(f"{a}: unknown param {clip(axis.param, 24)!r} ({hint})")
            taken = [b for b, (k2, key2, _) in resolved.items() if (k2, key2) == (kind, key)]
            if taken:
                raise ValueError(f"{a}: {clip(axis.param, 40)!r} is already the {taken[0]} axis")
            resolved[a] = (kind, key, self._values(a, axis, kind, key, op, base))
        self._axes = {a: (axis.param, resolved[a][2]) for a, axis in axes.items()}
        count = math.prod(len(v) for _, _, v in resolved.values())
        if count > MAX_CELLS:
            raise ValueError(f"at most {MAX_CELLS} cells, got {count}")
        cells = []
        ranges = [range(len(resolved[a][2])) for a in axes]
        for i, at in enumerate(itertools.product(*reversed(ranges))):  # x varies fastest
            at = tuple(reversed(at))
            data = {**base, "op": name, "backend": self.backend, "model": self.model,
                    "options": {**self.options, **options}}
            values = {}
            for a, k in zip(axes, at, strict=True):
                kind, key, vals = resolved[a]
                values[a] = vals[k]
                if kind == "field":
                    data[key] = vals[k]
                else:
                    data["options"] = {**data["options"], key: vals[k]}
            if data["model"] is None:
                data.pop("model")
            try:
                spec = op.model_validate(data)
            except ValidationError as exc:
                field, text = _first_error(exc)
                where = next((a for a in axes if resolved[a][1] == field and resolved[a][0] == "field"), None)
                label = ", ".join(f"{self._axes[a][0]}={_short(v)}" for a, v in values.items())
                raise ValueError(f"{where + ' axis, ' if where else ''}cell {label}: {text}") from None
            cells.append(Cell(i, at, values, spec))
        self._cells = cells
        return self

    @staticmethod
    def _values(a: str, axis: Axis, kind: str, key: str, op: type[OpSpec], base: dict) -> list:
        if axis.values is not None:
            return list(axis.values)
        if axis.matrix is not None:
            try:
                return prompt_matrix(axis.matrix)
            except ValueError as exc:
                raise ValueError(f"{a}.matrix: {exc}") from None
        if (kind, key) != ("field", "seed"):
            raise ValueError(f"{a}: batch_count repeats seeds: its param is seed (a field of {op.op_name()})")
        first = base.get("seed", op.model_fields["seed"].get_default(call_default_factory=True)) or 0
        size = base.get("n", op.model_fields["n"].get_default() if "n" in op.model_fields else 1)
        step = size if isinstance(size, int) and size > 0 else 1
        if not isinstance(first, int):
            raise ValueError("base.seed: an integer")
        return [first + k * step for k in range(axis.batch_count or 1)]

    # ----- traits from the cells -----
    def cells(self) -> list[Cell]:
        """Every cell, x varying fastest, then y, then z."""
        return self._cells

    def axes(self) -> dict[str, tuple[str, list]]:
        """axis name -> (param, values)."""
        return self._axes

    def output_count(self) -> int:
        return sum(c.spec.output_count() for c in self._cells)

    def option_sets(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for c in self._cells:
            if type(c.spec).backend_options:
                out += [c.spec.options, *c.spec.option_sets()]
        return out

    def required_capabilities(self) -> set[str]:
        return set().union(*(c.spec.required_capabilities() for c in self._cells))

    # ----- the handler -----
    def run(self, job: JobContext) -> None:
        from studio.spec import parse_spec

        cells = self.cells()
        total = len(cells)
        specs = []
        for c in cells:  # every cell in full (inline images, bounds) before any of them runs
            try:
                specs.append(parse_spec(c.spec, job.settings, check_backend=False))
            except StudioError as exc:
                raise _named(exc, f"cell {c.index + 1}/{total} ({c.label(self._axes)})") from None
        tiles: dict[tuple[int, ...], Image.Image | None] = {}
        listed = []
        for c, spec in zip(cells, specs, strict=True):
            where = f"cell {c.index + 1}/{total} ({c.label(self._axes)})"
            job.progress(c.index * 1000, total * 1000, where, None)
            workdir = job.workdir / f"cell_{c.index:03d}" if job.workdir is not None else None
            if workdir is not None:
                workdir.mkdir(parents=True, exist_ok=True)
            sub = job.child(spec, _cell_progress(job, c.index, total, where), workdir)
            try:
                spec.run(sub)
            except StudioError as exc:
                raise _named(exc, where) from None
            names = []
            for art in sub.result.artifacts:
                art.name = f"c{c.index:03d}_{art.name}"
                job.result.artifacts.append(art)
                names.append(art.name)
            tiles[c.at] = _tile(sub.result.artifacts)
            metrics = {k: v for k, v in sub.result.metrics.items() if k not in ("notes", "warnings")}
            for key in ("notes", "warnings"):
                for text in sub.result.metrics.get(key, []):
                    job.result.metrics.setdefault(key, []).append(f"{where}: {text}")
            listed.append({"index": c.index, "at": list(c.at), "label": c.label(self._axes),
                           **{a: v for a, v in c.values.items()}, "artifacts": names, "metrics": metrics})
        job.progress(total * 1000, total * 1000, "labelling the grid", None)
        grids = self._draw(job, tiles)
        job.result.metrics.update(cells=listed, grids=grids,
                                  axes={a: {"param": p, "values": v} for a, (p, v) in self._axes.items()},
                                  n=sum(c.spec.output_count() for c in cells))

    def _draw(self, job: JobContext, tiles: dict[tuple[int, ...], Image.Image | None]) -> list[str]:
        px, xs = self._axes["x"]
        py, ys = self._axes.get("y", ("", [None]))
        zs = self._axes.get("z", ("", [None]))[1]
        names = []
        for k, zv in enumerate(zs):
            rows = [[tiles.get(tuple(t for t in (ix, iy, k)[:len(self._axes)])) for ix in range(len(xs))]
                    for iy in range(len(ys))]
            title = f"{self._axes['z'][0]}={_short(zv, 80)}" if "z" in self._axes else None
            im = labelled_grid(rows, [f"{px}={_short(v)}" for v in xs],
                               [f"{py}={_short(v)}" for v in ys] if "y" in self._axes else [], title)
            name = f"grid_z{k}.png" if "z" in self._axes else "grid.png"
            job.add_image(name, im, {"grid": True, **({"z": zv} if "z" in self._axes else {})})
            names.append(name)
        return names


def _named(exc: StudioError, where: str) -> StudioError:
    """`exc` with `where` (the cell) in front, same class, one line."""
    text = clip(f"{where}: {exc}", 290)
    try:
        return type(exc)(text)
    except Exception:  # an error class with another constructor
        return InputError(text)


def _cell_progress(job: JobContext, index: int, total: int, where: str):  # noqa: ANN202 - a Progress
    def report(step: int, steps: int, message: str = "", preview: object = None) -> None:
        frac = min(max(step / steps, 0.0), 1.0) if steps else 0.0
        job.progress(index * 1000 + int(frac * 1000), total * 1000, f"{where}: {message}" if message else where,
                     preview)
    return report


def _tile(artifacts: list) -> Image.Image | None:
    """A cell's picture: its own grid or strip when it made one, else its only image, else its images tiled."""
    import io

    from PIL import Image as PILImage

    from studio import images as imgs

    found = [a for a in artifacts if a.kind == "image"]
    if not found:
        return None
    chosen = [a for a in found if a.name.split("_", 1)[-1] in ("grid.png", "strip.png")]
    pick = chosen[:1] or found
    loaded = [PILImage.open(io.BytesIO(a.data)).convert("RGB") for a in pick[:64]]
    if len(loaded) == 1:
        return loaded[0]
    w, h = max(i.width for i in loaded), max(i.height for i in loaded)
    return imgs.grid([i.resize((w, h)) for i in loaded])


def _font(size: int = LABEL_PX):  # noqa: ANN202 - a PIL font
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: object, text: str, font: object, width: int) -> str:
    """`text` cut (with "...") to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:  # type: ignore[attr-defined]
        return text
    while text and draw.textlength(text + "...", font=font) > width:  # type: ignore[attr-defined]
        text = text[:-1]
    return text + "..."


def labelled_grid(rows: list[list[Image.Image | None]], xlabels: list[str], ylabels: list[str],
                  title: str | None = None, pad: int = 4) -> Image.Image:
    """Tiles in rows and columns with `xlabels` above the columns, `ylabels` left of the rows and an optional title
    line; small tiles are scaled up (nearest) to at least TILE_MIN pixels wide, a missing tile is left blank."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    present = [t for row in rows for t in row if t is not None]
    w = max((t.width for t in present), default=TILE_MIN)
    h = max((t.height for t in present), default=TILE_MIN)
    scale = min(8, max(1, math.ceil(TILE_MIN / w)))
    w, h = w * scale, h * scale
    font = _font()
    probe = ImageDraw.Draw(PILImage.new("RGB", (1, 1)))
    line = LABEL_PX + 8
    left = 0
    if ylabels:
        left = min(240, int(max(probe.textlength(t, font=font) for t in ylabels)) + 2 * pad)
    top = line + (line if title else 0)
    cols, nrows = len(xlabels), len(rows)
    out = PILImage.new("RGB", (left + cols * (w + pad) + pad, top + nrows * (h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    if title:
        draw.text((pad, 4), _fit(draw, title, font, out.width - 2 * pad), fill=(0, 0, 0), font=font)
    for ix, text in enumerate(xlabels):
        x0 = left + pad + ix * (w + pad)
        shown = _fit(draw, text, font, w)
        tw = draw.textlength(shown, font=font)
        draw.text((x0 + (w - tw) / 2, top - line + 3), shown, fill=(0, 0, 0), font=font)
    for iy, row in enumerate(rows):
        y0 = top + pad + iy * (h + pad)
        if ylabels:
            shown = _fit(draw, ylabels[iy], font, left - 2 * pad)
            draw.text((pad, y0 + h / 2 - LABEL_PX / 2), shown, fill=(0, 0, 0), font=font)
        for ix, tile in enumerate(row):
            x0 = left + pad + ix * (w + pad)
            if tile is None:
                draw.rectangle((x0, y0, x0 + w - 1, y0 + h - 1), fill=(230, 230, 230))
                continue
            big = tile.resize((tile.width * scale, tile.height * scale), PILImage.Resampling.NEAREST)
            out.paste(big, (x0 + (w - big.width) // 2, y0 + (h - big.height) // 2))
    return out
