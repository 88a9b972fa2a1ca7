"""The op commands, defined once and mounted twice: `studio run <op>` (in-process) and `studio submit <op>` (queued).

Each builder turns command-line arguments into a job spec dict; the mode decides what happens to it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from studio.cli.common import parse_option_pairs, source
from studio.errors import InputError, clip
from studio.parsing import parse_floats, parse_ints

Backend = Annotated[str, typer.Option("--backend", "-b", help="Backend name (see `studio plugins`).")]
Model = Annotated[str | None, typer.Option(help="Model name or path (default: the backend's first model).")]
Prompt = Annotated[str | None, typer.Option(help="Prompt, for backends that take text.")]
Negative = Annotated[str | None, typer.Option("--negative-prompt", help="Negative prompt.")]
Guidance = Annotated[float | None, typer.Option(help="Classifier-free guidance scale.")]
Scheduler = Annotated[str | None, typer.Option(help="Scheduler (SD: ddim, euler, dpmpp).")]
Width = Annotated[int | None, typer.Option(help="Image width (backends with a size option).")]
Height = Annotated[int | None, typer.Option(help="Image height (backends with a size option).")]
OptionPairs = Annotated[list[str] | None, typer.Option("--option", "-o", help="Backend option KEY=VALUE (repeatable).")]


def _options(prompt: str | None = None, negative_prompt: str | None = None, guidance: float | None = None,
             scheduler: str | None = None, width: int | None = None, height: int | None = None,
             option: list[str] | None = None, **more: Any) -> dict:
    given = {"prompt": prompt, "negative_prompt": negative_prompt, "guidance": guidance, "scheduler": scheduler,
             "width": width, "height": height, **more}
    return {**{k: v for k, v in given.items() if v is not None}, **parse_option_pairs(option)}


def sample(backend: Backend, model: Model = None,
           n: Annotated[int, typer.Option("--n", "-n", help="Number of images.")] = 16,
           seed: Annotated[int, typer.Option(help="Seed of the first image; image i uses seed + i.")] = 0,
           temperature: Annotated[float, typer.Option(help="Scale of the prior draw.")] = 1.0,
           truncation: Annotated[float | None, typer.Option(help="Truncate the prior to [-t, t].")] = None,
           prompt: Prompt = None, negative_prompt: Negative = None, guidance: Guidance = None,
           steps: Annotated[int | None, typer.Option(help="Denoising steps (diffusion backends).")] = None,
           scheduler: Scheduler = None, width: Width = None, height: Height = None, option: OptionPairs = None) -> dict:
    """Sample images from seeds."""
    return {"op": "sample", "backend": backend, "model": model, "n": n, "seed": seed, "temperature": temperature,
            "truncation": truncation,
            "options": _options(prompt, negative_prompt, guidance, scheduler, width, height, option, steps=steps)}


def interpolate(backend: Backend, model: Model = None,
                from_seed: Annotated[int | None, typer.Option(help="Start seed.")] = None,
                to_seed: Annotated[int | None, typer.Option(help="End seed.")] = None,
                from_image: Annotated[str | None, typer.Option(help="Start image (PNG/JPEG path).")] = None,
                to_image: Annotated[str | None, typer.Option(help="End image.")] = None,
                to_prompt: Annotated[str | None, typer.Option(help="End prompt (start: --prompt).")] = None,
                steps: Annotated[int, typer.Option(help="Number of frames.")] = 9,
                method: Annotated[str, typer.Option(help="slerp or lerp.")] = "slerp",
                prompt: Prompt = None, negative_prompt: Negative = None, guidance: Guidance = None,
                scheduler: Scheduler = None, width: Width = None, height: Height = None,
                option: OptionPairs = None) -> dict:
    """Walk between two seeds or two images: frames, a strip and a GIF."""
    if to_prompt is not None and to_seed is None and to_image is None:
        to_seed = from_seed
    return {"op": "interpolate", "backend": backend, "model": model, "steps": steps, "method": method,
            "start": source(from_seed, from_image, "the start (--from-seed or --from-image)"),
            "end": source(to_seed, to_image, "the end (--to-seed or --to-image)",
                          {"prompt": to_prompt} if to_prompt is not None else None),
            "options": _options(prompt, negative_prompt, guidance, scheduler, width, height, option)}


def edit(backend: Backend, model: Model = None,
         vector: Annotated[str, typer.Option(help="Vector name (see `studio vectors list`).")] = ...,
         strengths: Annotated[str, typer.Option(help="Comma-separated strengths.")] = "-2,-1,0,1,2",
         seed: Annotated[int | None, typer.Option(help="Seed to edit.")] = None,
         image: Annotated[str | None, typer.Option(help="Image to edit.")] = None,
         prompt: Prompt = None, negative_prompt: Negative = None, guidance: Guidance = None,
         scheduler: Scheduler = None, width: Width = None, height: Height = None, option: OptionPairs = None) -> dict:
    """Apply an attribute vector at several strengths: the edit strip."""
    return {"op": "edit", "backend": backend, "model": model, "vector": vector,
            "strengths": parse_floats(strengths, "--strengths"), "source": source(seed, image, "what to edit"),
            "options": _options(prompt, negative_prompt, guidance, scheduler, width, height, option)}


def traverse(backend: Backend, model: Model = None,
             seed: Annotated[int | None, typer.Option(help="Seed of the centre point.")] = None,
             image: Annotated[str | None, typer.Option(help="Image for the centre point.")] = None,
             dims: Annotated[str, typer.Option(help="Latent dimensions, e.g. 0-7.")] = "0-7",
             range_: Annotated[str, typer.Option("--range", help="Values LOW,HIGH set on each dimension.")] = "-3,3",
             steps: Annotated[int, typer.Option(help="Columns per dimension.")] = 7,
             prompt: Prompt = None, option: OptionPairs = None) -> dict:
    """A traversal grid: one row per latent dimension."""
    lo_hi = parse_floats(range_, "--range")
    if len(lo_hi) != 2:
        raise InputError(f"--range takes LOW,HIGH, got {clip(range_)!r}")
    return {"op": "traverse", "backend": backend, "model": model, "source": source(seed, image, "the centre"),
            "dims": parse_ints(dims, "--dims"), "low": lo_hi[0], "high": lo_hi[1], "steps": steps,
            "options": _options(prompt, option=option)}


def analogy(backend: Backend, model: Model = None,
            a_seed: Annotated[int | None, typer.Option(help="A as a seed.")] = None,
            a_image: Annotated[str | None, typer.Option(help="A as an image.")] = None,
            b_seed: Annotated[int | None, typer.Option(help="B as a seed.")] = None,
            b_image: Annotated[str | None, typer.Option(help="B as an image.")] = None,
            c_seed: Annotated[int | None, typer.Option(help="C as a seed.")] = None,
            c_image: Annotated[str | None, typer.Option(help="C as an image.")] = None,
            prompt: Prompt = None, option: OptionPairs = None) -> dict:
    """A - B + C in latent space."""
    return {"op": "analogy", "backend": backend, "model": model, "a": source(a_seed, a_image, "A"),
            "b": source(b_seed, b_image, "B"), "c": source(c_seed, c_image, "C"),
            "options": _options(prompt, option=option)}


def roundtrip(backend: Backend, model: Model = None,
              bits: Annotated[int, typer.Option(help="Bits per latent element (1-12).")] = 8,
              dataset: Annotated[str | None, typer.Option(help="Dataset: mnist, fashion, animals, digits.")] = None,
              split: Annotated[str, typer.Option(help="train or test.")] = "test",
              limit: Annotated[int, typer.Option(help="Number of dataset images.")] = 1000,
              image: Annotated[str | None, typer.Option(help="One image: writes original, reconstruction and "
                                                                 "baselines side by side.")] = None,
              prompt: Prompt = None, width: Width = None, height: Height = None, option: OptionPairs = None) -> dict:
    """Compression round trip: encode, quantise, entropy-code to bytes, decode; metrics against JPEG/WebP."""
    if (dataset is None) == (image is None):
        raise InputError("give --dataset or --image (one of them)")
    from studio.cli.common import image_ref

    return {"op": "roundtrip", "backend": backend, "model": model, "bits": bits, "dataset": dataset, "split": split,
            "limit": limit, "image": image_ref(image),
            "options": _options(prompt, width=width, height=height, option=option)}


def walk(backend: Backend, model: Model = None,
         seeds: Annotated[str | None, typer.Option(help="Keyframe seeds, e.g. 1,2,3.")] = None,
         prompts: Annotated[str | None, typer.Option(help="Keyframe prompts separated by '|' (with --seed).")] = None,
         seed: Annotated[int, typer.Option(help="Seed for a prompt walk.")] = 0,
         frames: Annotated[int, typer.Option(help="Frames per segment.")] = 8,
         method: Annotated[str, typer.Option(help="slerp or lerp.")] = "slerp",
         prompt: Prompt = None, negative_prompt: Negative = None, guidance: Guidance = None,
         scheduler: Scheduler = None, width: Width = None, height: Height = None, option: OptionPairs = None) -> dict:
    """A multi-keyframe walk as one job (resumable): frames and a GIF."""
    if (seeds is None) == (prompts is None):
        raise InputError("give --seeds or --prompts (one of them)")
    if seeds is not None:
        keyframes = [{"seed": s} for s in parse_ints(seeds, "--seeds")]
    else:
        keyframes = [{"seed": seed, "options": {"prompt": p.strip()}} for p in prompts.split("|")]
    return {"op": "walk", "backend": backend, "model": model, "keyframes": keyframes, "frames_per_segment": frames,
            "method": method, "options": _options(prompt, negative_prompt, guidance, scheduler, width, height, option)}


def evaluate(backend: Backend, model: Model = None,
             n: Annotated[int, typer.Option("--n", "-n", help="Number of samples per draw.")] = 2000,
             repeats: Annotated[int, typer.Option(help="Draws of n averaged (samples and floor).")] = 5,
             seed: Annotated[int, typer.Option(help="First seed.")] = 0) -> dict:
    """Sample quality: FLD (Fréchet distance in the project's MNIST classifier features) and its floor."""
    return {"op": "evaluate", "backend": backend, "model": model, "n": n, "repeats": repeats, "seed": seed}


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


BUILDERS: dict[str, Callable[..., dict]] = {
    "sample": sample, "interpolate": interpolate, "edit": edit, "traverse": traverse, "analogy": analogy,
    "roundtrip": roundtrip, "walk": walk, "evaluate": evaluate, "project": project, "anomalies": anomalies,
    "train": train,
}
PARAM = inspect.Parameter.KEYWORD_ONLY


def mount(app: typer.Typer, extra: list[inspect.Parameter], action: Callable[..., None],
          builders: dict[str, Callable[..., dict]] | None = None) -> None:
    """Add one command per builder to `app`: it builds the spec, then calls action(spec, **extra_values)."""
    for name, builder in (builders or BUILDERS).items():
        sig = inspect.signature(builder, eval_str=True)
        params = [p.replace(kind=PARAM) for p in sig.parameters.values()] + extra
        extra_names = [p.name for p in extra]

        def command(__builder=builder, __extra=extra_names, **kwargs: Any) -> None:
            values = {k: kwargs.pop(k) for k in __extra}
            spec = __builder(**kwargs)
            spec = {k: v for k, v in spec.items() if v is not None}
            action(spec, **values)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__doc__ = builder.__doc__
        command.__name__ = name
        app.command(name)(command)


def out_param(default: str | None = None) -> inspect.Parameter:
    return inspect.Parameter("out", PARAM, default=default,
                             annotation=Annotated[Path | None, typer.Option(help="Output folder.")])


def json_param() -> inspect.Parameter:
    return inspect.Parameter("as_json", PARAM, default=False,
                             annotation=Annotated[bool, typer.Option("--json", help="Print JSON.")])
