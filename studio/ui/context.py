"""What every tab shares: the client and job runner, the catalog, settings, and the global pickers (backend, model,
the text row of TEXT backends, the generated options form and the raw-JSON options)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from studio.config import Settings
from studio.contract import TEXT_FIELDS
from studio.errors import InputError
from studio.ui.catalog import Catalog
from studio.ui.inputs import parse_options
from studio.ui.jobs import JobRunner, QueueClient
from studio.ui.scatter import DatasetImages

TEXT = "text"
# the text fields (studio.contract.TextOptions) the text row has a control for; a TEXT backend's other options,
# its other text fields (width, height, scheduler) included, are generated form controls (studio.ui.options)
TEXT_ROW: tuple[str, ...] = tuple(f for f in TEXT_FIELDS if f in ("prompt", "negative_prompt", "steps", "guidance"))


@dataclass
class UIContext:
    client: QueueClient
    settings: Settings
    catalog: Catalog
    runner: JobRunner
    images: DatasetImages
    # filled in while the page is built
    components: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.components[name]

    def common_inputs(self) -> list[Any]:
        """Inputs every job handler takes first: backend, model, prompt, negative prompt, steps, guidance,
        backend options (JSON), and the options form's values (a State: not an API parameter)."""
        return [self.components[k] for k in ("backend", "model", "prompt", "negative_prompt", "steps", "guidance",
                                             "options_json", "options_form")]

    def job_event(self, trigger: Any, fn: Any, **kwargs: Any) -> Any:
        """Wire a job handler to `trigger` (e.g. `button.click`): the options form is read into `options_form`
        first, then `fn` runs with `kwargs` (api_name...). API clients call `fn` alone: their form is empty."""
        collect, inputs, output = self.components["collect_form"]
        first = {k: kwargs.pop(k) for k in ("trigger_mode",) if k in kwargs}
        return trigger(collect, inputs=inputs, outputs=output, api_visibility="private", queue=False,
                       **first).success(fn, **kwargs)

    def job_base(self, backend: str | None, model: str | None, prompt: str | None, negative_prompt: str | None,
                 steps: float | None, guidance: float | None, options_json: str | None,
                 form: dict | None = None) -> dict:
        """The backend, model and options part of a job spec from the global pickers: the model resolved for the
        backend (Catalog.resolve_model), the options from the form, the text row (TEXT backends) and the
        JSON box, each on top of the one before."""
        if not backend:
            raise InputError("pick a backend first")
        if not isinstance(backend, str):
            raise InputError(f"backend: expected a backend name, got {type(backend).__name__}")
        typed = {}
        entry = self.catalog.get(backend)
        if entry is not None and entry.can(TEXT):
            given = {"prompt": prompt, "negative_prompt": negative_prompt or None,
                     "steps": int(steps) if steps else None, "guidance": guidance if guidance else None}
            typed = {k: v for k, v in given.items() if v is not None and k in TEXT_ROW}
        options = {**(form if isinstance(form, dict) else {}), **typed, **parse_options(options_json)}
        return {"backend": backend, "model": self.catalog.resolve_model(backend, model), "options": options}

    @property
    def max_images(self) -> int:
        return max(1, int(self.settings.max_images))
