"""The Celery app: all of its configuration lives here, and the one task (run a job by id) is registered here.

`make_app(settings, broker_url)` builds a configured app; `studio.queue.app.app` is the app for the current
environment (STUDIO_* variables), built on first use, for `celery -A studio.queue.app worker|flower|inspect`.

What the configuration guarantees:
- JSON only (task, result, accepted content): a pickle message is refused, never deserialised;
- late acknowledgement, reject on worker loss, prefetch 1: a message is acked only once its job ended, and a
  worker holds one job at a time, so a killed worker loses nothing (its job's lease also expires, see jobstore);
- priorities 0-9 (Redis: ten priority steps; RabbitMQ: x-max-priority), a per-job time limit;
- every broker key is prefixed with STUDIO_QUEUE_PREFIX, so several studios or test runs can share a Redis;
- remote control (Celery's broadcast commands: `shutdown`, `pool_restart`, inspect...) is off unless
  STUDIO_REMOTE_CONTROL is 1/true/yes (Flower and `celery inspect` need it): anyone who can write to the broker
  could otherwise stop every worker with one plain JSON message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from studio.config import Settings, load_settings
from studio.queue.broker import broker_kind, resolve_broker_url
from studio.queue.routing import DEFAULT_PRIORITY, TASK_NAME, broker_priority

if TYPE_CHECKING:
    from celery import Celery


def remote_control_enabled(settings: Settings) -> bool:
    """Whether workers obey Celery remote-control broadcasts (STUDIO_REMOTE_CONTROL=1; off by default)."""
    return bool(settings.remote_control)


def celery_config(settings: Settings, broker_url: str) -> dict[str, Any]:
    """The Celery settings for this studio (no connection is made)."""
    kind = broker_kind(broker_url)
    conf: dict[str, Any] = {
        "broker_url": broker_url,
        "result_backend": None,  # job records live in the job store, not in Celery's expiring results
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": settings.job_time_limit_s + 60,  # hard limit (prefork pools); the soft one is checked
        "task_soft_time_limit": settings.job_time_limit_s,  # at every progress step by the job runner as well
        "task_default_queue": f"{settings.queue_prefix}.default",
        "task_default_priority": broker_priority(DEFAULT_PRIORITY, kind),
        "task_create_missing_queues": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "worker_enable_remote_control": remote_control_enabled(settings),
        "worker_consumer": "studio.queue.faults:StudioConsumer",  # malformed messages are rejected, not fatal
        "worker_disable_rate_limits": True,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "enable_utc": True,
    }
    if kind == "redis":
        vt = max(1, settings.visibility_timeout_s)
        conf["broker_transport_options"] = {
            "visibility_timeout": vt,
            "priority_steps": list(range(10)),
            # Priority steps are the outer loop of every BRPOP, so priority holds across all queues; within one
            # step, round robin keeps backends fair ("priority" would always favour the first queue).
            "queue_order_strategy": "round_robin",
            "global_keyprefix": f"{settings.queue_prefix}:",
            "unacked_restore_interval": max(1, min(10, vt // 2)),
            "unacked_restore_throttle": 1,
        }
    else:
        conf["task_queue_max_priority"] = 9
    return conf


def make_app(settings: Settings | None = None, broker_url: str | None = None) -> Celery:
    """A Celery app configured for `settings`, with the job task registered."""
    from celery import Celery

    settings = settings or load_settings()
    url = broker_url or resolve_broker_url(settings)
    app = Celery("studio", set_as_current=False)
    app.conf.update(celery_config(settings, url))
    app.studio_settings = settings  # type: ignore[attr-defined]

    from studio.queue.jobproc import dispatch

    @app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
              max_retries=0)
    def run_job_task(task: Any, job_id: str) -> dict:
        """Run the job with this id (its spec is in the job store), in the worker's job process if it has one."""
        return dispatch(task.app, job_id)

    return app


_app: Celery | None = None


def __getattr__(name: str) -> Any:
    """`app` (and `celery`, for `celery -A studio.queue.app`): built from the environment on first use."""
    global _app
    if name in ("app", "celery"):
        if _app is None:
            _app = make_app()
            _app.set_current()
        return _app
    raise AttributeError(name)
