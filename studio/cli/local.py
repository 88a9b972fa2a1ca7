"""Commands that run in this process: run <op>, plugins, vectors, train, evaluate, plugin check.

Plugins add their own commands (`studio gan ...`, `studio sd ...`) through the `latent_studio.commands` group."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from studio.cli import ops
from studio.cli.common import Bar, check_name, print_json
from studio.errors import InputError

run_app = typer.Typer(help="Run an operation in this process and write its outputs.", no_args_is_help=True)
vectors_app = typer.Typer(help="Attribute vectors: fit, discover, list, share.", no_args_is_help=True)
plugin_app = typer.Typer(help="Plugin tools for authors: conformance checks.", no_args_is_help=True)


def run_spec(spec: dict, out: Path | None = None, as_json: bool = False) -> dict:
    """Run a spec in-process, write its artifacts to `out`, print a summary (or JSON). The spec is checked before
    any model code loads, so bad input gets its one line at once."""
    from studio.config import load_settings
    from studio.spec import check_backend_options, check_capabilities, parse_spec
    from studio.users import user_from_env

    settings = load_settings()
    checked = parse_spec(spec, settings, check_backend=False)
    check_capabilities(checked)
    check_backend_options(checked)
    webhook = spec.get("webhook")
    if webhook is not None:
        from studio.webhook_policy import check_webhook

        check_webhook(webhook, settings)
    from studio.executor import execute  # torch and the backend's model code from here on

    bar = Bar(spec["op"])
    try:  # with users defined, the run is the CLI user's (their vectors; a new vector is theirs)
        result = execute(spec, progress=bar, owner=user_from_env(settings))
    except Exception as exc:
        if webhook is not None:
            _deliver(webhook, {"state": "FAILED", "error": str(exc), "spec": spec}, settings)
        raise
    finally:
        bar.close()
    written = result.write(out or Path("out") / spec["op"]) if result.artifacts else []
    if webhook is not None:
        _deliver(webhook, {"state": "SUCCEEDED", "op": spec["op"], "backend": spec.get("backend"),
                           "model": spec.get("model"), "spec": spec, "metrics": result.metrics, "progress": 1.0,
                           "artifacts": [{"name": a.name, "kind": a.kind, "size": len(a.data)}
                                         for a in result.artifacts]}, settings)
    if as_json:
        print_json(result.metrics)
    else:
        for path in written:
            print(path)
        shown = {k: v for k, v in result.metrics.items() if k not in ("seeds", "notes", "warnings")}
        if shown:
            print(json.dumps(shown, default=str))
    for note in result.metrics.get("notes", []):
        sys.stderr.write(f"note: {note}\n")
    for warning in result.metrics.get("warnings", []):
        sys.stderr.write(f"warning: {warning}\n")
    return result.metrics


def _deliver(url: str, job: dict, settings: object) -> None:
    """POST the run's summary to its webhook (signed, retried); failures are told on stderr, never raised."""
    from studio.queue.webhooks import deliver_now

    if not deliver_now(url, {"op": job.get("spec", {}).get("op"), **job}, settings,
                       report=lambda line: sys.stderr.write(f"warning: {line}\n")):
        sys.stderr.write("warning: the webhook was not delivered\n")


ops.mount(run_app, [ops.out_param(), ops.json_param()], run_spec)


def plugins(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
            load: Annotated[bool, typer.Option("--load", help="Load the models whose backend cannot tell their "
                                                             "spaces without loading (slow: torch and weights).")]
            = False) -> None:
    """List installed backends: versions, capabilities, models (with sha256, image shape and latent spaces) and
    load errors. Nothing is loaded unless --load is given."""
    from studio.plugins_info import describe_plugins

    info = describe_plugins(load_models=load)
    if as_json:
        print_json(info)
        return
    for b in info["backends"]:
        print(f"{b['name']} {b['version']}  [{', '.join(b['capabilities'])}]  (entry point: {b['entry_point']})")
        for m in b["models"]:
            print(f"    model {m['name']}: sha256 {(m['sha256'] or 'not computed yet')[:16]}...  {m['path']}")
            if m.get("image_shape"):
                print(f"        images {'x'.join(map(str, m['image_shape']))}")
            for s in m.get("spaces", []):
                print(f"        space {s['name']}: shape {tuple(s['shape'])}, prior {s['prior']}, "
                      f"roles {', '.join(s['roles'])}")
            if m.get("error"):
                print(f"        BROKEN: {m['error']}")
            elif m.get("spaces_error"):
                print(f"        spaces unknown: {m['spaces_error']}")
            elif "spaces" not in m:
                print("        spaces: not declared without loading (--load loads the model to show them)")
        if b.get("error"):
            print(f"    load error: {b['error']}")
    by_source: dict[str, list[str]] = {}
    for op in info["ops"]:
        by_source.setdefault(op["entry_point"], []).append(op["name"])
    for source_name, names in by_source.items():
        print(f"ops ({source_name}): {', '.join(names)}")
    for e in info["errors"]:
        print(f"{e['plugin']}: FAILED TO LOAD: {e['error']}")


def vectors_fit(backend: ops.Backend, model: ops.Model = None,
                name: Annotated[str, typer.Option(help="Name to store the vector under.")] = ...,
                dataset: Annotated[str | None, typer.Option(help="Dataset with the attribute (mnist, ...).")] = None,
                attribute: Annotated[str | None, typer.Option(help="class:7, class:3-vs-8, thickness, slant.")] = None,
                method: Annotated[str, typer.Option(help="mean, balanced or classifier.")] = "classifier",
                limit: Annotated[int, typer.Option(help="Dataset images to use.")] = 10000,
                with_seeds: Annotated[str | None, typer.Option(help="Picked seeds WITH the attribute.")] = None,
                without_seeds: Annotated[str | None, typer.Option(help="Picked seeds WITHOUT it.")] = None,
                with_prompt: Annotated[str | None, typer.Option(help="Text direction: prompt with it.")] = None,
                without_prompt: Annotated[str | None, typer.Option(help="Text direction: prompt without it.")] = None,
                as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Fit an attribute vector from dataset labels, picked seeds, or two prompts; store it."""
    from studio.parsing import parse_ints

    spec: dict = {"op": "fit_vector", "backend": backend, "model": model, "name": name, "method": method,
                  "limit": limit}
    if dataset is not None:
        spec.update(dataset=dataset, attribute=attribute)
    if with_seeds is not None or without_seeds is not None:
        spec.update(with_seeds=parse_ints(with_seeds or "", "--with-seeds"),
                    without_seeds=parse_ints(without_seeds or "", "--without-seeds"))
    if with_prompt is not None or without_prompt is not None:
        spec.update(with_options={"prompt": with_prompt or ""}, without_options={"prompt": without_prompt or ""})
    metrics = run_spec({k: v for k, v in spec.items() if v is not None}, out=None, as_json=as_json)
    del metrics


def vectors_discover(backend: ops.Backend, model: ops.Model = None,
                     k: Annotated[int, typer.Option("--k", "-k", help="How many directions (1-64).")] = 8,
                     name: Annotated[str, typer.Option(help="Name prefix: directions are stored as PREFIX0 .. "
                                                            "PREFIX{K-1}.")] = "pc",
                     method: Annotated[str, typer.Option(help="auto, encoded (PCA of the encoded dataset) or "
                                                              "features (GANSpace: PCA of an intermediate layer, "
                                                              "mapped back to the seed space).")] = "auto",
                     dataset: Annotated[str, typer.Option(help="Dataset to encode (method encoded).")] = "mnist",
                     n: Annotated[int, typer.Option("--n", "-n", help="Images encoded or samples drawn.")] = 5000,
                     seed: Annotated[int, typer.Option(help="Seed of the draws and the PCA.")] = 0,
                     option: ops.OptionPairs = None,
                     as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Discover unsupervised directions (principal directions of the encoded data, or GANSpace) and store them as
    ordinary named vectors that any edit applies (`studio run edit --vector pc0`)."""
    from studio.cli.common import parse_option_pairs
    from studio.config import load_settings
    from studio.executor import Runtime
    from studio.ops.discover import check_k, discover, save_discovery
    from studio.users import user_from_env
    from studio.vectorstore import check_name as check_vector_name

    check_name(backend, "backend")
    check_k(k)
    check_vector_name(f"{name}{max(k - 1, 0)}", "vector name prefix")
    settings = load_settings()
    loaded = Runtime(settings).get_backend(backend, model)
    options = loaded.parse_options(parse_option_pairs(option))
    bar = Bar("discover")
    try:
        found = discover(loaded, k, method, dataset, n, seed, settings, options, progress=bar)
    finally:
        bar.close()
    names = save_discovery(found, loaded, settings, name, owner=user_from_env(settings))
    summary = {"backend": backend, "model": loaded.model.name, "space": found.space, "method": found.method,
               "n": found.n, "source": found.source, "vectors": names,
               "explained_variance": [round(e, 5) for e in found.explained],
               "sigma": [round(s, 5) for s in found.sigma]}
    if as_json:
        print_json(summary)
        return
    print(f"{found.source}")
    for vector, explained in zip(names, found.explained, strict=True):
        print(f"{vector}  explains {explained:.1%}")
    print(f"apply one with: studio run edit --backend {backend} --vector {names[0]} --seed 0 --strengths -3,0,3")


def vectors_share(name: Annotated[str, typer.Argument(help="The vector's name.")], backend: ops.Backend,
                  model: ops.Model = None,
                  with_users: Annotated[str, typer.Option("--with", help="Comma-separated user names, or * for "
                                                                          "everyone.")] = ...) -> None:
    """Share one of your vectors with other users (with users defined; admins may share any vector)."""
    from studio.config import load_settings
    from studio.contract import choose_model
    from studio.registry import get_backend_class
    from studio.users import user_from_env, viewer_for
    from studio.vectorstore import share_vector

    settings = load_settings()
    users = sorted({u.strip() for u in with_users.split(",") if u.strip()})
    if not users:
        raise InputError("--with: give at least one user name (or * for everyone)")
    info = choose_model(backend, get_backend_class(backend).available_models(settings), model)
    meta = share_vector(settings, backend, info.sha256, name, users,
                        viewer=viewer_for(settings, user_from_env(settings)))
    print(f"vector {name!r} of {backend} is shared with {', '.join(meta['shared'])}")


def vectors_list(backend: Annotated[str | None, typer.Option(help="Only this backend.")] = None,
                 as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List stored vectors."""
    from studio.config import load_settings
    from studio.users import user_from_env, viewer_for
    from studio.vectorstore import list_vectors

    settings = load_settings()
    rows = list_vectors(settings, backend, viewer=viewer_for(settings, user_from_env(settings)))
    if as_json:
        print_json(rows)
        return
    if not rows:
        print("no vectors yet: fit one with `studio vectors fit`")
    for r in rows:
        auc = f"auc {r['auc']:.3f}" if isinstance(r.get("auc"), float) else ""
        print(f"{r['name']}  backend {r['backend']}  model {r.get('model', '?')}  space {r.get('space')}  "
              f"{r.get('method', '')} {r.get('attribute', '') or ''} {auc}".rstrip())


def train(backend: Annotated[str, typer.Argument(help="Backend to train (vae, gan, sd or its alias ldm).")],
          dataset: Annotated[str, typer.Option(help="mnist, fashion, folder:PATH (sd: mnist-fashion).")] = "mnist",
          epochs: Annotated[int, typer.Option(help="Epochs.")] = 10,
          out: Annotated[Path | None, typer.Option(help="Also write the weights here (sd: a pipeline folder); "
                                                       "they are always placed in the model root as well.")] = None,
          name: Annotated[str | None, typer.Option(help="The model's name for --model (default: --out's file "
                                                        "name, else DATASET-seedSEED).")] = None,
          seed: Annotated[int, typer.Option(help="Seed: same seed, same weights.")] = 0,
          batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
          limit: Annotated[int | None, typer.Option(help="Use only the first N training images.")] = None,
          train_option: Annotated[list[str] | None, typer.Option(
              "--train-option", help="Recipe option KEY=VALUE (repeatable; e.g. latent_dim=32).")] = None) -> None:
    """Train a backend's weights (deterministic by seed), with a progress bar, and install them as a model:
    `<first model root>/<backend>/NAME`, so that `--model NAME` runs them (an --out elsewhere is copied there)."""
    from studio.cli.common import parse_option_pairs
    from studio.cli.trained import register_trained, train_target
    from studio.config import load_settings
    from studio.contract import TRAIN
    from studio.registry import get_trainable_class

    if epochs < 1:
        raise InputError(f"epochs must be at least 1, got {epochs}")
    cls = get_trainable_class(check_name(backend, "backend"))
    if TRAIN not in cls.capabilities:
        raise InputError(f"backend {backend!r} cannot be trained here")
    kwargs = {k: v for k, v in {"batch_size": batch_size, "limit": limit}.items() if v is not None}
    kwargs.update(parse_option_pairs(train_option, "--train-option"))
    settings = load_settings()
    target = train_target(cls, settings, out, name, dataset, seed)
    target.write.parent.mkdir(parents=True, exist_ok=True)
    bar = Bar(f"train {backend}", force=True)
    try:
        metrics = cls.train(dataset, epochs, str(target.write), seed, settings, progress=bar, **kwargs)
    finally:
        bar.close()
    path = register_trained(target)
    print_json({**metrics, "model": target.name, "model_path": str(path)})
    sys.stderr.write(f"model {target.name!r} installed at {path}: use it with "
                     f"`studio run sample --backend {cls.name} --model {target.name}`\n")


def evaluate(backend: ops.Backend, model: ops.Model = None, n: ops.EvalN = 2000, repeats: ops.EvalRepeats = 5,
             seed: ops.EvalSeed = 0, dataset: ops.EvalDataset = "mnist", quality: ops.EvalQuality = True,
             ppl_pairs: ops.PplPairs = None, ppl_eps: ops.PplEps = 1e-4, separability_n: ops.SeparabilityN = None,
             separability_labels: ops.SeparabilityLabels = "auto",
             option: ops.OptionPairs = None,
             as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Sample quality against a dataset (FCD and KID with their floors, in the project's classifier features) and the
    latent space's regularity (perceptual path length along slerp and lerp, linear separability of the classes)."""
    spec = ops.evaluate(backend, model, dataset, n, repeats, seed, quality, ppl_pairs, ppl_eps, separability_n,
                        separability_labels)
    from studio.cli.common import parse_option_pairs

    spec["options"] = parse_option_pairs(option)
    run_spec({k: v for k, v in spec.items() if v is not None}, None, as_json)


def plugin_check(name: Annotated[str, typer.Argument(help="Backend to check.")],
                 model: ops.Model = None,
                 as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
                 expect_fail: Annotated[list[str] | None, typer.Option(
                     "--expect-fail", help="CHECK=REASON: a check expected to fail (XFAIL; repeatable).")] = None,
                 train_option: Annotated[list[str] | None, typer.Option(
                     "--train-option", help="KEY=VALUE for the train check's call of train (repeatable).")] = None,
                 ) -> None:
    """Run the conformance checks against an installed backend (the third-party plugin kit). Checks that do not
    apply to the backend's capabilities print SKIP with the reason; only FAIL lines fail the command."""
    from studio.cli.common import parse_option_pairs
    from studio.conformance import FAIL, PASS, run_checks

    expected = {k: str(v) for k, v in parse_option_pairs(expect_fail).items()}
    results = run_checks(check_name(name, "backend"), model, expected_failed_checks=expected,
                         train_options=parse_option_pairs(train_option, "--train-option"))
    if as_json:
        print_json([r.__dict__ for r in results])
    else:
        for r in results:
            print(f"{r.status.upper():5s}  {r.name}{'' if r.status == PASS else ': ' + r.detail}")
        counts = {s: sum(r.status == s for r in results) for s in dict.fromkeys(r.status for r in results)}
        print(", ".join(f"{n} {s}" for s, n in counts.items()))
    failed = [r for r in results if r.status == FAIL]
    if failed:
        raise InputError(f"{len(failed)} of {len(results)} conformance checks failed for backend {name!r}")


def register(app: typer.Typer) -> None:
    app.add_typer(run_app, name="run")
    app.command("plugins")(plugins)
    vectors_app.command("fit")(vectors_fit)
    vectors_app.command("discover")(vectors_discover)
    vectors_app.command("list")(vectors_list)
    vectors_app.command("share")(vectors_share)
    app.add_typer(vectors_app, name="vectors")
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    plugin_app.command("check")(plugin_check)
    from studio.cli.plugin_new import plugin_new

    plugin_app.command("new")(plugin_new)
    app.add_typer(plugin_app, name="plugin")
