"""How a run executes its steps, chosen by the deployment (``O2A_EXECUTOR``), never by the code.

The embedded default runs each run in one process (parallelism comes from the run queue:
one session per run); a deployment with workers on other machines sets ``celery`` and
points the runs and the workers at the same broker (``deploy/celery``).
"""

from __future__ import annotations

import os

import dagster as dg


#: ``O2A_EXECUTOR``: how a run executes its steps. ``in_process`` (default): one process per run, so a
#: backfill's parallelism is the run queue's (one session per run at a time is what a session needs);
#: ``multiprocess``: a process per step; ``celery``: steps go to Celery workers (``deploy/celery``);
#: ``k8s``: a Kubernetes job per step (``deploy/k8s``).
EXECUTORS = ("in_process", "multiprocess", "celery", "k8s")


def celery_settings() -> dict:
    """The Celery executor's configuration from the environment, the same on the runs and the workers
    (``deploy/celery/dagster_celery_config.py`` reads these too): broker and result backend
    (``O2A_CELERY_BROKER``, ``O2A_CELERY_BACKEND``, Redis URLs), late acknowledgement so a task whose
    worker dies goes back to the queue, one task per worker process at a time, and Dagster's step
    retries on (a step that failed on a lost worker runs again)."""
    broker = os.environ.get("O2A_CELERY_BROKER", "redis://127.0.0.1:6379/0")
    return {"broker": broker, "backend": os.environ.get("O2A_CELERY_BACKEND", broker),
            "config_source": celery_worker_settings(), "retries": {"enabled": {}}}


def celery_worker_settings() -> dict:
    """Celery settings both sides need: acks late, requeue on a lost worker, no prefetching, and how
    long an unacknowledged task waits before Redis hands it to another worker (``O2A_CELERY_REDELIVER_SECONDS``)."""
    redeliver = int(os.environ.get("O2A_CELERY_REDELIVER_SECONDS", "3600"))
    return {"task_acks_late": True, "task_reject_on_worker_lost": True, "worker_prefetch_multiplier": 1,
            # kombu's Redis transport looks for abandoned tasks every interval x throttle seconds
            "broker_transport_options": {"visibility_timeout": redeliver,
                                         "unacked_restore_interval": max(1, min(10, redeliver // 10)),
                                         "unacked_restore_throttle": 1}}


def executor_from_environment() -> dg.ExecutorDefinition:
    """The executor ``O2A_EXECUTOR`` names (see ``EXECUTORS``); an unknown name fails with the known ones."""
    name = os.environ.get("O2A_EXECUTOR", "in_process")
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        return dg.multiprocess_executor
    if name == "celery":
        from dagster_celery import celery_executor  # the deploy extra: pip install '.[deploy]'

        return celery_executor.configured(celery_settings())
    if name == "k8s":
        from dagster_k8s import k8s_job_executor  # pip install dagster-k8s in the deployment's image

        return k8s_job_executor
    raise ValueError(f"O2A_EXECUTOR={name!r} is not one of {', '.join(EXECUTORS)}")

