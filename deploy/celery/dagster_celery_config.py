"""Celery settings of the workers (``dagster_celery.app`` imports a module of this name when it can).

The same settings as the runs' executor (``pipelines.executors.celery_settings``), so both sides
agree on the broker and on late acknowledgement: a task whose worker dies is handed to another.
"""

from pipelines.executors import celery_settings

_settings = celery_settings()
broker_url = _settings["broker"]
result_backend = _settings["backend"]
globals().update(_settings["config_source"])
