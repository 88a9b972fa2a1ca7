"""Live previews of a denoising loop: the sampler's prediction of the clean latent, decoded by the VAE, for the first
image of the batch, at steps a time budget allows.

Previews only read tensors the loop makes anyway (a scheduler's `pred_original_sample`); they draw no random numbers
and change nothing the loop computes, so the final images are the same with and without them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from studio.contract import Progress, no_progress

if TYPE_CHECKING:
    import torch

PREVIEW_BUDGET = 0.1  # previews may cost at most this share of the denoising time


class PreviewThrottle:
    """When a loop of `total` steps may spend time on a preview. The first: when its expected cost (one step's)
    fits in `budget` of the projected denoising time, so with `budget` 0.1 and 10 steps or more it comes after the
    first step. Each later one: when the previews so far plus the next one's expected cost (the last one's) stay
    within `budget` of the denoising time so far, which spreads them evenly over the loop."""

    def __init__(self, total: int, budget: float = PREVIEW_BUDGET, clock: Callable[[], float] = time.perf_counter
                 ) -> None:
        self.total = total
        self.budget = budget
        self.clock = clock
        self.started = clock()
        self.spent = 0.0  # seconds spent on previews so far
        self.cost: float | None = None  # the last preview's cost

    def due(self, step: int) -> bool:
        """Whether a preview may be made after `step` (1-based) of `total`; never after the last step."""
        if step < 1 or step >= self.total:
            return False
        per_step = max(self.clock() - self.started - self.spent, 0.0) / step
        if self.cost is None:
            return per_step <= self.budget * per_step * self.total
        return self.spent + self.cost <= self.budget * per_step * step

    def spend(self, seconds: float) -> None:
        """Record what a preview cost."""
        self.spent += seconds
        self.cost = seconds


def predicted_x0(output: object, scheduler: object) -> torch.Tensor | None:
    """The clean-latent prediction of a scheduler step's output: DDIM and Euler return it (`pred_original_sample`,
    or second in the tuple); DPM-Solver++ keeps it as its latest model output. None when there is none."""
    if isinstance(output, tuple):
        if len(output) > 1:
            return output[1]
    elif getattr(output, "pred_original_sample", None) is not None:
        return output.pred_original_sample
    outputs = getattr(scheduler, "model_outputs", None)
    algorithm = getattr(getattr(scheduler, "config", None), "algorithm_type", "")
    if outputs and str(algorithm).endswith("dpmsolver++") and outputs[-1] is not None:
        return outputs[-1]
    return None


class LivePreviews:
    """Progress for a denoising loop, with a preview of the first image at the steps a PreviewThrottle allows.

    `watch(scheduler)` wraps that scheduler instance's `step` to keep its latest clean-latent prediction (its
    signature is kept, so a pipeline passes it the same arguments); `step(i, latents)` reports step i and, when due,
    a preview decoded by `render` from that prediction (or from `latents` when the scheduler gives none). With
    `progress` = no_progress, nothing is ever decoded."""

    def __init__(self, total: int, progress: Progress, render: Callable[[torch.Tensor], torch.Tensor],
                 message: str = "denoising", budget: float | None = None) -> None:
        budget = PREVIEW_BUDGET if budget is None else budget  # read now: settable (0 turns previews off)
        self.total = total
        self.progress = progress
        self.render = render
        self.message = message
        self.enabled = progress is not no_progress and budget > 0
        self.throttle = PreviewThrottle(total, budget)
        self.x0: torch.Tensor | None = None
        self.count = 0  # previews made

    def watch(self, scheduler: object) -> object:
        original = scheduler.step

        @functools.wraps(original)
        def step(*args: object, **kwargs: object) -> object:
            out = original(*args, **kwargs)
            self.x0 = predicted_x0(out, scheduler)
            return out

        scheduler.step = step
        self._watched = scheduler
        return scheduler

    def release(self) -> None:
        """Give the watched scheduler its own `step` back and drop the kept prediction."""
        watched, self._watched, self.x0 = getattr(self, "_watched", None), None, None
        if watched is not None:
            watched.__dict__.pop("step", None)

    def step(self, step: int, latents: torch.Tensor, total: int | None = None) -> None:
        """Report `step` (1-based) of `total` (default: as constructed), with a preview when one is due."""
        if total is not None:
            self.total = self.throttle.total = total
        if not (self.enabled and self.throttle.due(step)):
            self.progress(step, self.total, self.message)
            return
        started = time.perf_counter()
        source = self.x0 if self.x0 is not None else latents
        preview = self.render(source[:1])
        self.count += 1
        try:
            self.progress(step, self.total, self.message, preview)
        finally:
            self.throttle.spend(time.perf_counter() - started)
