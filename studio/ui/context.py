"""What every tab shares: the client and job runner, the catalog, settings, and the global pickers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from studio.config import Settings
from studio.errors import InputError
from studio.ui.catalog import Catalog
from studio.ui.inputs import parse_options
from studio.ui.jobs import JobRunner, QueueClient
from studio.ui.scatter import DatasetImages

TEXT = "text"


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
        backend options (JSON)."""
        return [self.components[k] for k in ("backend", "model", "prompt", "negative_prompt", "steps", "guidance",
                                             "options_json")]

    def job_base(self, backend: str | None, model: str | None, prompt: str | None, negative_prompt: str | None,
                 steps: float | None, guidance: float | None, options_json: str | None) -> dict:
        """The backend, model and options part of a job spec from the global pickers."""
        if not backend:
            raise InputError("pick a backend first")
        options = parse_options(options_json)
        entry = self.catalog.get(backend)
        if entry is not None and entry.can(TEXT):
            given = {"prompt": prompt, "negative_prompt": negative_prompt or None,
                     "steps": int(steps) if steps else None, "guidance": guidance if guidance else None}
            options = {**{k: v for k, v in given.items() if v is not None}, **options}
        return {"backend": backend, "model": model or None, "options": options}

    @property
    def max_images(self) -> int:
        return max(1, int(self.settings.max_images))
