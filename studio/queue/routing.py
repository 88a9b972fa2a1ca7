"""Queue names, priorities and micro-batch keys: shared by the client (which publishes) and the workers.

A job goes to `<prefix>.<class>.<backend>`, where the class comes from the backend's declared devices:
`gpu` (needs CUDA), `cpu` (CPU only) or `any`. A CUDA worker consumes all three classes of the backends
it has; a CPU worker consumes only `cpu` and `any`, so a GPU-only backend never lands on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from studio.errors import InputError

TASK_NAME = "studio.run_job"
DEFAULT_PRIORITY = 5


def device_class(devices: Iterable[str]) -> str:
    """'gpu' for a backend that needs CUDA, 'cpu' for a CPU-only one, else 'any'."""
    kinds = {d.split(":")[0] for d in devices}
    if "cpu" not in kinds:
        return "gpu"
    if "cuda" not in kinds:
        return "cpu"
    return "any"


def queue_name(prefix: str, backend: str, devices: Iterable[str]) -> str:
    return f"{prefix}.{device_class(devices)}.{backend}"


def worker_queues(prefix: str, device: str, backends: dict[str, Iterable[str]]) -> list[str]:
    """The queues a worker on `device` (cpu, cuda, cuda:N) consumes for `backends` {name: devices}."""
    on_gpu = device.split(":")[0] == "cuda"
    allowed = {"gpu", "cpu", "any"} if on_gpu else {"cpu", "any"}
    return [queue_name(prefix, name, devs) for name, devs in sorted(backends.items())
            if device_class(devs) in allowed]


def full_queue_names(prefix: str, names: Iterable[str]) -> list[str]:
    """Accept `any.vae` or `studio.any.vae` on the command line; return full names."""
    out = []
    for name in names:
        name = name.strip()
        if name:
            out.append(name if name.startswith(prefix + ".") else f"{prefix}.{name}")
    return out


def task_id(job_id: str) -> str:
    """The Celery task id of one message for a job: the job id, a dash, a random part (jobs may be re-sent)."""
    import secrets

    return f"{job_id}-{secrets.token_hex(4)}"


def check_priority(priority: object) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise InputError(f"priority must be an integer from 0 to 9 (9 most urgent), got {priority!r}")
    return priority


def broker_priority(priority: int, broker: str) -> int:
    """Our 0-9 (9 most urgent) in the broker's terms: Redis serves 0 first, RabbitMQ serves 9 first."""
    return 9 - priority if broker == "redis" else priority


def batch_key(spec: dict, max_images: int, owner: str | None = None) -> str | None:
    """Jobs with the same key can share one forward pass (a batchable op, same owner, differing only in the op's
    `batch_varying` fields), else None.

    The owner is part of the key: jobs of different users never share a batch (a follower's record names its
    leader's job id). `owner` None (the single-user default) keeps the key it always had.
    """
    from studio.registry import get_op

    op = get_op(str(spec.get("op")))
    if not op.batchable or max_images <= 1 or op.model_validate(spec).output_count() >= max_images:
        return None
    rest = {k: v for k, v in spec.items() if k not in op.batch_varying}
    payload = rest if owner is None else {"owner": owner, "spec": rest}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]
