"""Latent Studio's Celery workers: the app (one module, `app`), the job task, the runtime (model cache, device).

Start one with `studio worker` (or `python -m studio_workers`); `studio up` starts one for you.
"""
