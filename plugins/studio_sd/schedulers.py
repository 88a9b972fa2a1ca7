"""The schedulers a job can choose, each built from the checkpoint's own noise-schedule config.

Building from the checkpoint's config keeps its betas, `prediction_type` (epsilon or v for SD-2.x) and
`steps_offset`; only the sampling algorithm changes. All three are deterministic (no noise in `step`).
"""

from __future__ import annotations

from typing import Literal

SchedulerName = Literal["ddim", "euler", "dpmpp"]
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIM (eta 0, deterministic)",
    "euler": "Euler (Karras et al. 2022, Algorithm 2 without churn)",
    "dpmpp": "DPM-Solver++ (2nd-order multistep)",
}


def make_scheduler(name: str, base_config: dict):  # -> diffusers SchedulerMixin
    """A fresh scheduler of kind `name` (see SCHEDULERS) with the noise schedule of `base_config`."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    config = dict(base_config)
    if name == "ddim":
        return DDIMScheduler.from_config(config, steps_offset=1)  # as StableDiffusionPipeline enforces
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if name == "dpmpp":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"unknown scheduler {name!r} (use one of: {', '.join(SCHEDULERS)})")
