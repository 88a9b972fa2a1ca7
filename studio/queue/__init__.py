"""The job queue, one package: the broker, the job records (claims, leases, events), artifact storage, the Python
client, routing, the Celery app (one module, `app`) and its task, and the worker runtime (model cache, device).

Imports only go down: this package uses the core (studio.*) and never a front end (studio.cli, studio.ui).
Start a worker with `studio worker`; `studio up` starts one for you.
"""
