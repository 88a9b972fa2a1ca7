"""The op commands, mounted twice: `studio run <op>` (in-process) and `studio submit <op>` (queued).

Every registered op gets a command (studio.registry: the core's ops and any plugin's). An op's flags come from
its spec's fields (`generated_builder`); a built-in op may have a hand-written builder here instead, for friendlier
flags (`--from-seed`, comma lists). Ops that take backend options also get the text flags, generated from
studio.contract.TextOptions (`--prompt`, `--negative-prompt`, `--steps`, `--guidance`, `--width`, `--height`,
`--scheduler`), and repeatable `--option KEY=VALUE`: `--steps` always means denoising steps.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from studio.cli.common import image_ref, parse_option_pairs, source
from studio.errors import InputError, clip
from studio.parsing import parse_floats, parse_ints

Backend = Annotated[str, typer.Option("--backend", "-b", help="Backend name (see `studio plugins`).")]
Model = Annotated[str | None, typer.Option(help="Model name or path (default: the backend's first model).")]
OptionPairs = Annotated[list[str] | None, typer.Option("--option", "-o", help="Backend option KEY=VALUE (repeatable).")]
PARAM = inspect.Parameter.KEYWORD_ONLY


def sample(backend: Backend, model: Model = None,
           n: Annotated[int, typer.Option("--n", "-n", help="Number of images.")] = 16,
           seed: Annotated[int, typer.Option(help="Seed of the first image; image i uses seed + i.")] = 0,
           temperature: Annotated[float, typer.Option(help="Scale of the prior draw.")] = 1.0,
           truncation: Annotated[float | None, typer.Option(help="Truncate the prior to [-t, t].")] = None,) -> dict:
    """Sample images from seeds."""
    return {"op": "sample", "backend": backend, "model": model, "n": n, "seed": seed, "temperature": temperature,
            "truncation": truncation}


def interpolate(backend: Backend, model: Model = None,
                from_seed: Annotated[int | None, typer.Option(help="Start seed.")] = None,
                to_seed: Annotated[int | None, typer.Option(help="End seed.")] = None,
                from_image: Annotated[str | None, typer.Option(help="Start image (PNG/JPEG path).")] = None,
                to_image: Annotated[str | None, typer.Option(help="End image.")] = None,
                to_prompt: Annotated[str | None, typer.Option(help="End prompt (start: --prompt).")] = None,
                frames: Annotated[int, typer.Option(help="Number of frames.")] = 9,
                method: Annotated[str, typer.Option(help="slerp or lerp.")] = "slerp") -> dict:
    """Walk between two seeds or two images: frames, a strip and a GIF."""
    if to_prompt is not None and to_seed is None and to_image is None:
        to_seed = from_seed
    return {"op": "interpolate", "backend": backend, "model": model, "steps": frames, "method": method,
            "start": source(from_seed, from_image, "the start (--from-seed or --from-image)"),
            "end": source(to_seed, to_image, "the end (--to-seed or --to-image)",
                          {"prompt": to_prompt} if to_prompt is not None else None)}


def _vector_terms(vectors: list[str]) -> tuple[str | None, dict[str, float] | None]:
    """`--vector` values: one bare NAME (the old form, with --strengths), or NAME=STRENGTH pairs (a chained edit)."""
    if len(vectors) == 1 and "=" not in vectors[0]:
        return vectors[0].strip(), None
    terms: dict[str, float] = {}
    for raw in vectors:
        name, sep, value = raw.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InputError(f"--vector {clip(raw)!r}: give NAME=STRENGTH for each of several vectors (or one NAME "
                             "with --strengths)")
        try:
            strength = float(value)
        except ValueError:
            raise InputError(f"--vector {clip(raw)!r}: the strength of {clip(name)!r} is not a number") from None
        if name in terms:
            raise InputError(f"--vector {clip(name)!r} is given twice")
        terms[name] = strength
    return None, terms


def edit(backend: Backend, model: Model = None,
         vector: Annotated[list[str], typer.Option(help="Vector name (see `studio vectors list`), applied at each of "
                                                        "--strengths; or NAME=STRENGTH, repeatable, to apply several "
                                                        "at once (e.g. --vector thick=1.5 --vector slant=-1).")] = ...,
         strengths: Annotated[str | None, typer.Option(help="Comma-separated strengths (default -2,-1,0,1,2); with "
                                                            "NAME=STRENGTH vectors, scales of their sum (default "
                                                            "0,1).")] = None,
         seed: Annotated[int | None, typer.Option(help="Seed to edit.")] = None,
         image: Annotated[str | None, typer.Option(help="Image to edit.")] = None) -> dict:
    """Apply an attribute vector at several strengths: the edit strip (or several vectors at once)."""
    one, terms = _vector_terms(vector)
    chosen = {"vector": one} if terms is None else {"vectors": terms}
    shown = parse_floats(strengths, "--strengths") if strengths is not None else \
        ([-2.0, -1.0, 0.0, 1.0, 2.0] if terms is None else None)
    return {"op": "edit", "backend": backend, "model": model, **chosen, "strengths": shown,
            "source": source(seed, image, "what to edit")}


def traverse(backend: Backend, model: Model = None,
             seed: Annotated[int | None, typer.Option(help="Seed of the centre point.")] = None,
             image: Annotated[str | None, typer.Option(help="Image for the centre point.")] = None,
             dims: Annotated[str, typer.Option(help="Latent dimensions, e.g. 0-7.")] = "0-7",
             range_: Annotated[str, typer.Option("--range", help="Values LOW,HIGH set on each dimension.")] = "-3,3",
             columns: Annotated[int, typer.Option(help="Columns per dimension.")] = 7) -> dict:
    """A traversal grid: one row per latent dimension."""
    lo_hi = parse_floats(range_, "--range")
    if len(lo_hi) != 2:
        raise InputError(f"--range takes LOW,HIGH, got {clip(range_)!r}")
    return {"op": "traverse", "backend": backend, "model": model, "source": source(seed, image, "the centre"),
            "dims": parse_ints(dims, "--dims"), "low": lo_hi[0], "high": lo_hi[1], "steps": columns}


def analogy(backend: Backend, model: Model = None,
            a_seed: Annotated[int | None, typer.Option(help="A as a seed.")] = None,
            a_image: Annotated[str | None, typer.Option(help="A as an image.")] = None,
            b_seed: Annotated[int | None, typer.Option(help="B as a seed.")] = None,
            b_image: Annotated[str | None, typer.Option(help="B as an image.")] = None,
            c_seed: Annotated[int | None, typer.Option(help="C as a seed.")] = None,
            c_image: Annotated[str | None, typer.Option(help="C as an image.")] = None) -> dict:
    """A - B + C in latent space."""
    return {"op": "analogy", "backend": backend, "model": model, "a": source(a_seed, a_image, "A"),
            "b": source(b_seed, b_image, "B"), "c": source(c_seed, c_image, "C")}


def roundtrip(backend: Backend, model: Model = None,
              bits: Annotated[int, typer.Option(help="Bits per latent element (1-12).")] = 8,
              dataset: Annotated[str | None, typer.Option(help="Dataset: mnist, fashion, animals, digits.")] = None,
              split: Annotated[str, typer.Option(help="train or test.")] = "test",
              limit: Annotated[int, typer.Option(help="Number of dataset images.")] = 1000,
              image: Annotated[str | None, typer.Option(help="One image: writes original, reconstruction and "
                                                                 "baselines side by side.")] = None) -> dict:
    """Compression round trip: encode, quantise, entropy-code to bytes, decode; metrics against JPEG/WebP."""
    if (dataset is None) == (image is None):
        raise InputError("give --dataset or --image (one of them)")
    return {"op": "roundtrip", "backend": backend, "model": model, "bits": bits, "dataset": dataset, "split": split,
            "limit": limit, "image": image_ref(image)}


def walk(backend: Backend, model: Model = None,
         seeds: Annotated[str | None, typer.Option(help="Keyframe seeds, e.g. 1,2,3.")] = None,
         prompts: Annotated[str | None, typer.Option(help="Keyframe prompts separated by '|' (with --seed).")] = None,
         seed: Annotated[int, typer.Option(help="Seed for a prompt walk.")] = 0,
         frames: Annotated[int, typer.Option(help="Frames per segment.")] = 8,
         method: Annotated[str, typer.Option(help="slerp or lerp.")] = "slerp",
         video: Annotated[str, typer.Option(help="gif (walk.gif) or mp4 (walk.mp4 too; needs the video extra, "
                                                 "PyAV).")] = "gif") -> dict:
    """A multi-keyframe walk as one job (resumable): frames and a GIF (and an MP4 with --video mp4)."""
    if (seeds is None) == (prompts is None):
        raise InputError("give --seeds or --prompts (one of them)")
    if seeds is not None:
        keyframes = [{"seed": s} for s in parse_ints(seeds, "--seeds")]
    else:
        keyframes = [{"seed": seed, "options": {"prompt": p.strip()}} for p in prompts.split("|")]
    return {"op": "walk", "backend": backend, "model": model, "keyframes": keyframes, "frames_per_segment": frames,
            "method": method, "video": video}


# The evaluate op's flags, shared by `studio run/submit evaluate` (below) and `studio evaluate` (studio.cli.local).
EvalDataset = Annotated[str, typer.Option(help="Dataset to score against (one with a classifier: mnist, fashion).")]
EvalN = Annotated[int, typer.Option("--n", "-n", help="Number of samples per draw.")]
EvalRepeats = Annotated[int, typer.Option(help="Draws of n averaged (samples and floor).")]
EvalSeed = Annotated[int, typer.Option(help="First seed.")]
EvalQuality = Annotated[bool, typer.Option("--quality/--no-quality", help="FCD, KID and confident share (needs "
                                                                          "1x28x28 images).")]
PplPairs = Annotated[int | None, typer.Option(help="Pairs for the perceptual path length (default min(1000, n); "
                                                   "0 skips it).")]
PplEps = Annotated[float, typer.Option(help="Step of the path length.")]
SeparabilityN = Annotated[int | None, typer.Option(help="Latents for the linear separability (default "
                                                        "min(4000, 2n); 0 skips it).")]
SeparabilityLabels = Annotated[str, typer.Option(help="auto, dataset (encoded test images) or samples (prior samples "
                                                      "labelled by the classifier).")]


def evaluate(backend: Backend, model: Model = None, dataset: EvalDataset = "mnist", n: EvalN = 2000,
             repeats: EvalRepeats = 5, seed: EvalSeed = 0, quality: EvalQuality = True, ppl_pairs: PplPairs = None,
             ppl_eps: PplEps = 1e-4, separability_n: SeparabilityN = None,
             separability_labels: SeparabilityLabels = "auto") -> dict:
    """Sample quality against a dataset: FCD and KID (Fréchet and kernel distances in the features of the project's
    classifier for that dataset) with their floors (real training images), and the confident share; and the latent
    space's regularity: perceptual path length (slerp and lerp) and linear separability of the classes."""
    return {"op": "evaluate", "backend": backend, "model": model, "dataset": dataset, "n": n, "repeats": repeats,
            "seed": seed, "quality": quality, "ppl_pairs": ppl_pairs, "ppl_eps": ppl_eps,
            "separability_n": separability_n, "separability_labels": separability_labels}


def project(backend: Backend, model: Model = None,
            dataset: Annotated[str, typer.Option(help="Dataset to encode.")] = "mnist",
            split: Annotated[str, typer.Option(help="train or test.")] = "test",
            method: Annotated[str, typer.Option(help="pca, tsne or umap.")] = "pca",
            limit: Annotated[int, typer.Option(help="Number of images.")] = 2000,
            seed: Annotated[int, typer.Option(help="Seed for t-SNE/UMAP.")] = 0) -> dict:
    """A 2-D map of an encoded dataset: coordinates, labels and a plot."""
    return {"op": "project", "backend": backend, "model": model, "dataset": dataset, "split": split,
            "method": method, "limit": limit, "seed": seed}


def anomalies(backend: Backend, model: Model = None,
              dataset: Annotated[str, typer.Option(help="Dataset to rank.")] = "mnist",
              split: Annotated[str, typer.Option(help="train or test.")] = "test",
              limit: Annotated[int, typer.Option(help="Number of images.")] = 2000,
              ood: Annotated[str | None, typer.Option(help="Out-of-distribution dataset for AUROC.")] = None,
              top: Annotated[int, typer.Option(help="How many top anomalies to show.")] = 16) -> dict:
    """Rank a dataset by reconstruction error (AUROC against an out-of-distribution set)."""
    return {"op": "anomalies", "backend": backend, "model": model, "dataset": dataset, "split": split,
            "limit": limit, "ood_dataset": ood, "top": top}


def train(backend: Backend,
          name: Annotated[str, typer.Option(help="Model name to register the weights as (see `studio models list`).")
                          ] = ...,
          dataset: Annotated[str, typer.Option(help="Training set: mnist, fashion or folder:PATH.")] = "mnist",
          epochs: Annotated[int, typer.Option(help="Epochs (1-1000).")] = 1,
          seed: Annotated[int, typer.Option(help="Seed: same seed, same weights.")] = 0,
          limit: Annotated[int | None, typer.Option(help="Use only the first N training images.")] = None,
          option: Annotated[list[str] | None, typer.Option("--option", "-o", help="Training option KEY=VALUE, "
                                                           "e.g. batch_size=64 (repeatable).")] = None) -> dict:
    """Train fresh weights and register them as a model every worker can use (stored by sha256)."""
    return {"op": "train", "backend": backend, "name": name, "dataset": dataset, "epochs": epochs, "seed": seed,
            "limit": limit, "options": parse_option_pairs(option)}


def grid(backend: Backend, model: Model = None,
         op: Annotated[str, typer.Option("--op", help="The base op of every cell.")] = "sample",
         x: Annotated[str | None, typer.Option("--x", help="X axis PARAM=V1,V2,... ('|' separates values that "
                                                          "hold commas): a field of the op or a backend option.")]
         = None,
         y: Annotated[str | None, typer.Option("--y", help="Y axis, like --x.")] = None,
         z: Annotated[str | None, typer.Option("--z", help="Z axis, like --x: one grid image per value.")] = None,
         prompt_matrix: Annotated[str | None, typer.Option(
             "--prompt-matrix", help="'a cat|red|watercolour': every combination of the parts after the first, as "
                                     "the next free axis.")] = None,
         batch_count: Annotated[int | None, typer.Option(
             "--batch-count", help="Batches of seeds (seed, seed + n, ...) as the next free axis.")] = None,
         n: Annotated[int | None, typer.Option("--n", "-n", help="The base op's n (images per cell).")] = None,
         seed: Annotated[int | None, typer.Option(help="The base op's seed.")] = None,
         set_: Annotated[list[str] | None, typer.Option("--set", help="Another field of the base op KEY=VALUE "
                                                                      "(repeatable; VALUE as JSON when it parses).")]
         = None) -> dict:
    """An X/Y/Z plot: the base op once per combination of the axes' values, in one job; a labelled grid.png."""
    from studio.builtin_ops.grid import add_axis, axis_from_text

    base: dict[str, Any] = {"op": op, **parse_option_pairs(set_, "--set")}
    base.update({k: v for k, v in {"n": n, "seed": seed}.items() if v is not None})
    spec: dict[str, Any] = {"op": "grid", "backend": backend, "model": model, "base": base}
    for name, text in (("x", x), ("y", y), ("z", z)):
        if text is not None:
            spec[name] = axis_from_text(text, f"--{name}")
    if prompt_matrix is not None:
        add_axis(spec, {"param": "prompt", "matrix": prompt_matrix}, "--prompt-matrix")
    if batch_count is not None:
        add_axis(spec, {"param": "seed", "batch_count": batch_count}, "--batch-count")
    if spec.get("x") is None:
        raise InputError("give the X axis: --x PARAM=V1,V2 (or --prompt-matrix, --batch-count)")
    if spec.get("z") is not None and spec.get("y") is None:
        raise InputError("--z needs a Y axis: give --y too")
    return spec


BUILDERS: dict[str, Callable[..., dict]] = {
    "sample": sample, "interpolate": interpolate, "edit": edit, "traverse": traverse, "analogy": analogy,
    "roundtrip": roundtrip, "walk": walk, "evaluate": evaluate, "project": project, "anomalies": anomalies,
    "train": train, "grid": grid,
}  # hand-written forms of built-in ops; every other registered op gets a generated one


# ----- commands generated from an op's spec -----

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _plain(annotation: object) -> tuple[object, bool]:
    """(the annotation without Optional and Annotated, whether None is allowed)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _plain(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner, _ = _plain(args[0]) if len(args) == 1 else (annotation, False)
        return inner, len(args) < len(typing.get_args(annotation))
    return annotation, False


def _field_params(name: str, field: Any) -> tuple[list[inspect.Parameter], Callable[[dict], Any]]:
    """The command-line flags of one spec field, and how to turn their values back into the field's value."""
    from studio.spec import ImageRef, Source

    kind, _ = _plain(field.annotation)
    required = field.is_required()
    default = None if required else field.get_default(call_default_factory=True)
    helptext = (field.description or name.replace("_", " ")) + (" (required)" if required else "")
    if typing.get_origin(kind) is typing.Literal:
        helptext += f" (one of: {', '.join(map(str, typing.get_args(kind)))})"
    elif typing.get_origin(kind) is dict or kind is dict:
        helptext += ": KEY=VALUE, repeatable"
    elif typing.get_origin(kind) is list:
        helptext += ", comma-separated"

    def param(pname: str, annotation: object, value: object = None, flag: str | None = None) -> inspect.Parameter:
        return inspect.Parameter(pname, PARAM, default=value,
                                 annotation=Annotated[annotation, typer.Option(flag or _flag(pname), help=helptext)])

    if kind is Source:
        seed_name, image_name = f"{name}_seed", f"{name}_image"
        params = [param(seed_name, int | None), param(image_name, str | None)]
        what = f"{name} ({_flag(seed_name)} or {_flag(image_name)})"

        def from_source(values: dict) -> Any:
            seed, image = values.pop(seed_name), values.pop(image_name)
            return None if seed is None and image is None and not required else source(seed, image, what)
        return params, from_source
    if kind is ImageRef:
        def from_image(values: dict) -> Any:
            return image_ref(values.pop(name))
        return [param(name, str | None)], from_image
    origin = typing.get_origin(kind)
    if origin is list:
        item = typing.get_args(kind)[0] if typing.get_args(kind) else str
        item, _ = _plain(item)
        shown = ",".join(str(x) for x in default) if isinstance(default, list) else None

        def from_list(values: dict, _item: object = item) -> Any:
            raw = values.pop(name)
            if raw is None:
                return None
            if _item is int:
                return parse_ints(raw, _flag(name))
            if _item is float:
                return parse_floats(raw, _flag(name))
            return [x.strip() for x in raw.split(",") if x.strip()]
        return [param(name, str | None, shown)], from_list
    if origin is dict or kind is dict:
        def from_pairs(values: dict) -> Any:
            return parse_option_pairs(values.pop(name), _flag(name)) or None
        return [param(name, list[str] | None, None)], from_pairs
    if typing.get_origin(kind) is typing.Literal or kind in (int, float, str, bool):
        annotation = str if typing.get_origin(kind) is typing.Literal else kind
        if kind is bool:
            flag = f"{_flag(name)}/--no-{name.replace('_', '-')}"
            return [param(name, bool | None, default, flag)], lambda values: values.pop(name)
        return [param(name, annotation | None, default)], lambda values: values.pop(name)

    def from_json(values: dict) -> Any:  # anything else: JSON text
        raw = values.pop(name)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise InputError(f"{_flag(name)} takes JSON, got {clip(raw)!r}") from None
    return [param(name, str | None)], from_json


def generated_builder(op: type[BaseModel]) -> Callable[..., dict]:
    """A builder for any op, from its spec's fields: scalars and literals become flags, lists comma-separated
    text, a Source `--NAME-seed`/`--NAME-image`, an image reference a file path (or dataset:NAME:SPLIT:INDEX),
    dicts repeatable KEY=VALUE, anything else JSON."""
    name = op.op_name()
    params = [inspect.Parameter("backend", PARAM, annotation=Backend),
              inspect.Parameter("model", PARAM, default=None, annotation=Model)]
    readers: list[Callable[[dict], Any]] = []
    fields: list[str] = []
    for field_name, field in op.model_fields.items():
        if field_name in ("op", "backend", "model", "options"):
            continue
        more, read = _field_params(field_name, field)
        params += more
        readers.append(read)
        fields.append(field_name)

    def build(**values: Any) -> dict:
        spec: dict[str, Any] = {"op": name, "backend": values.pop("backend"), "model": values.pop("model")}
        for field_name, read in zip(fields, readers, strict=True):
            spec[field_name] = read(values)
        return spec

    build.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    build.__doc__ = (op.__doc__ or f"The {name} op.").strip().split("\n\n")[0]
    return build


def text_params() -> list[inspect.Parameter]:
    """The text flags, one per studio.contract.TextOptions field (None: the backend's default)."""
    from studio.contract import TextOptions

    params = []
    for name, field in TextOptions.model_fields.items():
        kind, _ = _plain(field.annotation)
        helptext = f"{field.description} (text backends)" if field.description else None
        params.append(inspect.Parameter(name, PARAM, default=None,
                                        annotation=Annotated[kind | None, typer.Option(_flag(name), help=helptext)]))
    params.append(inspect.Parameter("option", PARAM, default=None, annotation=OptionPairs))
    return params


def op_builders() -> dict[str, tuple[Callable[..., dict], bool]]:
    """Every registered op's builder and whether its command takes backend options (text flags, --option)."""
    from studio.registry import load_registry

    return {name: (BUILDERS.get(name) or generated_builder(op), op.backend_options)
            for name, op in load_registry().ops.items()}


def mount(app: typer.Typer, extra: list[inspect.Parameter], action: Callable[..., None],
          builders: dict[str, tuple[Callable[..., dict], bool]] | None = None) -> None:
    """Add one command per op to `app`: it builds the spec, then calls action(spec, **extra_values)."""
    for name, (builder, takes_options) in (builders or op_builders()).items():
        own = [p.replace(kind=PARAM) for p in inspect.signature(builder, eval_str=True).parameters.values()]
        text = [p for p in text_params() if p.name not in {q.name for q in own}] if takes_options else []
        hook = [] if "webhook" in {q.name for q in own} else [webhook_param()]  # generated builders have it
        params = own + text + extra + hook
        extra_names = [p.name for p in extra]
        text_names = [p.name for p in text]

        def command(__builder=builder, __extra=extra_names, __text=text_names, __hook=bool(hook),
                    **kwargs: Any) -> None:
            values = {k: kwargs.pop(k) for k in __extra}
            given = {k: kwargs.pop(k) for k in __text}
            url = kwargs.pop("webhook", None) if __hook else None
            spec = __builder(**kwargs)
            if url is not None:
                spec["webhook"] = url
            if __text:
                pairs = parse_option_pairs(given.pop("option", None))
                options = {**{k: v for k, v in given.items() if v is not None}, **pairs}
                spec["options"] = {**spec.get("options", {}), **options}
            spec = {k: v for k, v in spec.items() if v is not None}
            action(spec, **values)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__doc__ = builder.__doc__
        command.__name__ = name
        app.command(name)(command)


def webhook_param() -> inspect.Parameter:
    """`--webhook URL`, on every op command: the spec's `webhook` (studio.queue.webhooks)."""
    return inspect.Parameter("webhook", PARAM, default=None, annotation=Annotated[str | None, typer.Option(
        help="POST the job's signed end summary to this http(s) URL (allowed by STUDIO_WEBHOOK_ALLOW; needs "
             "STUDIO_WEBHOOK_SECRET).")])


def out_param(default: str | None = None) -> inspect.Parameter:
    return inspect.Parameter("out", PARAM, default=default,
                             annotation=Annotated[Path | None, typer.Option(help="Output folder.")])


def json_param() -> inspect.Parameter:
    return inspect.Parameter("as_json", PARAM, default=False,
                             annotation=Annotated[bool, typer.Option("--json", help="Print JSON.")])
