"""A backend's options as form controls, generated from its Options JSON schema (`cls.Options.model_json_schema()`).

Gradio needs a fixed set of components, so the page holds a pool of generic controls, `POOL` of each kind:
sliders (numbers bounded on both sides), number boxes (other numbers), dropdowns (Literal / enum), checkboxes
(bools) and text boxes (strings). `form_fields(schema)` reads the fields, `assign(fields)` gives each a slot of its
kind, `pool_updates` shows, relabels and resets the pool for a backend, and `form_options` maps the submitted slot
values back to option names, keeping only values that differ from the field's default. Fields the pool cannot
show (lists, objects, unions, or more than `POOL` of a kind) are named in a note: the raw-JSON box sets them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

POOL = 8
KINDS = ("slider", "number", "dropdown", "checkbox", "text")
UNBOUNDED = float(2**53)  # a number box's range when the schema sets none (Gradio cannot reset a bound to None)
UNSET = "(unset)"  # the dropdown choice of a nullable field left unset


@dataclass(frozen=True)
class OptionField:
    """One option field as a control: its kind, label, help, default and range or choices."""

    name: str
    kind: str
    label: str
    info: str = ""
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    integer: bool = False
    choices: tuple = ()
    nullable: bool = False

    @property
    def step(self) -> float:
        """A slider step: 1 for integers; else fine enough for the range and the default."""
        if self.integer:
            return 1
        bounded = self.minimum is not None and self.maximum is not None and self.maximum > self.minimum
        step = 10.0 ** math.floor(math.log10((self.maximum - self.minimum) / 1000)) if bounded else 0.01
        if isinstance(self.default, float) and "." in repr(self.default) and "e" not in repr(self.default):
            step = min(step, 10.0 ** -len(repr(self.default).split(".")[1]))
        return step

    def shown(self) -> Any:
        """The value the control starts with."""
        if self.kind == "checkbox":
            return bool(self.default)
        if self.kind == "text":
            return "" if self.default is None else str(self.default)
        if self.kind == "dropdown":
            return UNSET if self.default is None and self.nullable else self.default
        if self.kind == "slider" and self.default is None:
            return self.minimum
        return self.default

    def value(self, raw: Any) -> tuple[bool, Any]:
        """(set, option value) for what the control holds: set is False when it means "the default"."""
        if self.kind == "dropdown" and raw == UNSET or self.kind == "text" and raw in ("", None) and self.nullable:
            raw = None
        elif self.kind == "checkbox":
            raw = bool(raw)
            if self.default is None and not raw:
                raw = None
        elif self.kind in ("slider", "number") and raw is not None:
            raw = int(round(float(raw))) if self.integer else float(raw)
        if raw is None or raw == self.default:
            return False, None
        return True, raw


def _resolve(prop: dict, defs: dict) -> dict:
    """`prop` with a local `$ref` (and a single-item `allOf`, as pydantic writes for an enum with a default)
    replaced by what it points to, the field's own keys winning."""
    for _ in range(8):
        ref = prop.get("$ref")
        if not ref and len(prop.get("allOf") or []) == 1:
            ref = prop["allOf"][0].get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#/$defs/"):
            return prop
        target = defs.get(ref.rsplit("/", 1)[-1], {})
        prop = {**target, **{k: v for k, v in prop.items() if k not in ("$ref", "allOf")}}
    return prop


def _field(name: str, prop: dict, defs: dict) -> OptionField | None:
    prop = _resolve(prop, defs)
    nullable = False
    variants = prop.get("anyOf") or prop.get("oneOf")
    if variants:
        real = [_resolve(v, defs) for v in variants if v.get("type") != "null"]
        nullable = len(real) < len(variants)
        if len(real) != 1:
            return None  # a union of several types: only the JSON box can say which
        prop = {**real[0], **{k: v for k, v in prop.items() if k not in ("anyOf", "oneOf")}}
    common = {"name": name, "label": str(prop.get("title") or name.replace("_", " ").capitalize()),
              "info": " ".join(str(prop.get("description") or "").split()), "default": prop.get("default"),
              "nullable": nullable}
    choices = prop.get("enum") or ([prop["const"]] if "const" in prop else None)
    kind = prop.get("type")
    if choices:
        if not all(isinstance(c, (str, int, float)) and not isinstance(c, bool) for c in choices):
            return None
        return OptionField(kind="dropdown", choices=tuple(choices), **common)
    if kind == "boolean":
        return OptionField(kind="checkbox", **common)
    if kind == "string":
        return OptionField(kind="text", **common)
    if kind in ("integer", "number"):
        low = prop.get("minimum", prop.get("exclusiveMinimum"))
        high = prop.get("maximum", prop.get("exclusiveMaximum"))
        bounded = low is not None and high is not None and not nullable
        return OptionField(kind="slider" if bounded else "number", minimum=low, maximum=high,
                           integer=kind == "integer", **common)
    return None


def form_fields(schema: dict | None, skip: tuple[str, ...] = ()) -> tuple[list[OptionField], list[str]]:
    """The fields of an Options JSON schema as controls, and the names of those no control can show (set them in
    the JSON box); fields named in `skip` are left out (the text row shows them)."""
    schema = schema or {}
    defs = schema.get("$defs") or {}
    fields, other = [], []
    for name, prop in (schema.get("properties") or {}).items():
        if name in skip:
            continue
        field = _field(name, prop if isinstance(prop, dict) else {}, defs)
        (fields.append(field) if field is not None else other.append(name))
    return fields, other


def assign(fields: list[OptionField]) -> tuple[dict[tuple[str, int], OptionField], list[str]]:
    """Slots (kind, index) for the fields, in order; the names of fields beyond the pool of their kind."""
    used = dict.fromkeys(KINDS, 0)
    slots, overflow = {}, []
    for field in fields:
        if used[field.kind] >= POOL:
            overflow.append(field.name)
            continue
        slots[(field.kind, used[field.kind])] = field
        used[field.kind] += 1
    return slots, overflow


@dataclass(frozen=True)
class Layout:
    """Which option field each pool slot shows for one backend (what `form_options` maps back)."""

    backend: str | None
    slots: dict[tuple[str, int], OptionField]
    elsewhere: list[str]  # fields to set in the JSON box

    @classmethod
    def of(cls, backend: str | None, schema: dict | None, skip: tuple[str, ...] = ()) -> Layout:
        fields, other = form_fields(schema, skip)
        slots, overflow = assign(fields)
        return cls(backend, slots, other + overflow)

    def note(self) -> str:
        if not self.slots and not self.elsewhere:
            return "This backend takes no other options."
        if not self.elsewhere:
            return ""
        return "Set " + ", ".join(f"`{n}`" for n in self.elsewhere) + " in the JSON box below."


def _update(field: OptionField | None, kind: str) -> dict:
    import gradio as gr

    if field is None:
        return gr.update(visible=False)
    common = {"visible": True, "label": field.label, "info": field.info, "value": field.shown()}
    if kind == "slider":
        return gr.update(minimum=field.minimum, maximum=field.maximum, step=field.step, **common)
    if kind == "number":
        low = -UNBOUNDED if field.minimum is None else field.minimum
        high = UNBOUNDED if field.maximum is None else field.maximum
        return gr.update(minimum=low, maximum=high, step=field.step, **common)
    if kind == "dropdown":
        return gr.update(choices=([UNSET] if field.nullable else []) + list(field.choices), **common)
    return gr.update(**common)


def pool_updates(layout: Layout) -> list[dict]:
    """One gr.update per pool control, in `pool_order()`: the slot's field shown and reset, or hidden."""
    return [_update(layout.slots.get((kind, i)), kind) for kind, i in pool_order()]


def pool_order() -> list[tuple[str, int]]:
    """The pool's slots in the order of its components (kind by kind)."""
    return [(kind, i) for kind in KINDS for i in range(POOL)]


def form_options(layout: Layout | None, backend: str | None, values: list[Any] | tuple) -> dict:
    """The option values the form holds for `backend` (only those differing from their defaults); {} when the form
    shows another backend's fields (an API call naming a backend leaves the form alone)."""
    if layout is None or layout.backend != backend:
        return {}
    out = {}
    for slot, raw in zip(pool_order(), values, strict=False):
        field = layout.slots.get(slot)
        if field is None:
            continue
        given, value = field.value(raw)
        if given:
            out[field.name] = value
    return out


def build_pool(layout: Layout) -> list[Any]:
    """Create the pool's components (inside the current Blocks context), showing `layout`."""
    import gradio as gr

    components = []
    for kind, i in pool_order():
        field = layout.slots.get((kind, i))
        shown = {"visible": field is not None, "label": field.label if field else f"{kind} {i + 1}",
                 "info": field.info if field else "", "elem_id": f"ls-opt-{kind}-{i}", "min_width": 160}
        value = field.shown() if field else None
        if kind == "slider":
            components.append(gr.Slider(field.minimum if field else 0, field.maximum if field else 1,
                                        value=value if field else 0, step=field.step if field else 0.01, **shown))
        elif kind == "number":
            components.append(gr.Number(value=value, minimum=(field.minimum if field and field.minimum is not None
                                                               else -UNBOUNDED),
                                        maximum=(field.maximum if field and field.maximum is not None
                                                 else UNBOUNDED),
                                        step=field.step if field else 1, **shown))
        elif kind == "dropdown":
            choices = ([UNSET] if field and field.nullable else []) + list(field.choices if field else ())
            components.append(gr.Dropdown(choices, value=value, **shown))
        elif kind == "checkbox":
            components.append(gr.Checkbox(value=bool(value), **shown))
        else:
            components.append(gr.Textbox(value=value or "", max_lines=1, **shown))
    return components


# ----- the text row's SD widgets: sampler (scheduler), width and height of a TEXT backend -----

TEXT_WIDGETS = ("scheduler", "width", "height")
DEFAULT_CHOICE = "default"  # a widget left at this sends nothing: the backend's own default
SIZES = (256, 320, 384, 448, 512, 576, 640, 704, 768, 896, 1024)  # multiples of 64 (so of 8, as SD needs)


def widget_fields(schema: dict | None) -> dict[str, OptionField]:
    """The text widgets' fields in a backend's Options schema (a backend without one has no such widget)."""
    fields, _ = form_fields(schema)
    return {f.name: f for f in fields if f.name in TEXT_WIDGETS}


def widget_choices(field: OptionField | None) -> list:
    """The choices of one text widget: DEFAULT_CHOICE, then the schedulers the Options accept (its Literal) or the
    sizes within the field's bounds."""
    if field is None:
        return [DEFAULT_CHOICE]
    if field.name == "scheduler":
        named = list(field.choices) if field.kind == "dropdown" else ([field.default] if field.default else [])
        return [DEFAULT_CHOICE, *named]
    low = field.minimum if field.minimum is not None else 0
    high = field.maximum if field.maximum is not None else max(SIZES)
    return [DEFAULT_CHOICE, *(s for s in SIZES if low <= s <= high)]


def widget_updates(schema: dict | None, values: tuple | list) -> list[dict]:
    """Updates for the scheduler, width and height widgets (in TEXT_WIDGETS order) for a backend's schema: its
    choices, shown only when its Options have the field; a value the backend accepts is kept (a PNG restore set it
    just before the backend changed), any other goes back to "default" (DEFAULT_CHOICE)."""
    import gradio as gr

    fields = widget_fields(schema)
    out = []
    for name, value in zip(TEXT_WIDGETS, values, strict=False):
        field = fields.get(name)
        choices = widget_choices(field)
        keep = field is not None and (value in choices or name != "scheduler" and _size(value) is not None)
        out.append(gr.update(choices=choices, visible=field is not None, value=value if keep else DEFAULT_CHOICE))
    return out


def _size(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def widget_options(scheduler: Any, width: Any, height: Any) -> dict:
    """The options the text widgets set: nothing for DEFAULT_CHOICE (or empty), else the scheduler's name and the
    sizes as whole numbers; InputError (one line, naming the widget) for anything else."""
    from studio.errors import InputError

    out: dict[str, Any] = {}
    if scheduler not in (None, "", DEFAULT_CHOICE):
        if not isinstance(scheduler, str):
            raise InputError("scheduler: expected a scheduler name")
        out["scheduler"] = scheduler
    for name, value in (("width", width), ("height", height)):
        if value in (None, "", DEFAULT_CHOICE):
            continue
        size = _size(value)
        if size is None:
            raise InputError(f"{name}: expected a number of pixels or {DEFAULT_CHOICE!r}")
        out[name] = size
    return out


def restored_widgets(options: dict | None) -> tuple[Any, Any, Any, dict]:
    """The scheduler, width and height a record's options set (DEFAULT_CHOICE where they set none), and the other
    options (for the JSON box)."""
    rest = dict(options or {})
    values = []
    for name in TEXT_WIDGETS:
        value = rest.pop(name, None)
        values.append(DEFAULT_CHOICE if value is None else value)
    return values[0], values[1], values[2], rest
