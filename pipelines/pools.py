"""Dagster concurrency pools: the steps that must not overlap too much, whichever run holds them.

The limits live in the deployment (``dagster.yaml``'s ``concurrency.pools`` and
``dagster instance concurrency set POOL N``), not here; ``pipelines.deployment`` sets them
for the embedded deployment from the machine's cores.
"""

#: mediapipe's face mesh: the step already runs one detector process per core.
LANDMARKS = "landmarks"
#: Training or adapting a prior: it takes every core (or the GPU) it is given.
TRAINING = "training"
