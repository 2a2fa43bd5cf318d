#!/usr/bin/env bash
# Start one Celery worker of the pipeline on this machine: it takes steps of any run from the
# `dagster` queue. Needs the repository installed (pip install '.[deploy]'), the same DAGSTER_HOME
# (deploy/celery/dagster.yaml), O2A_* settings and broker as the daemon (see README "Scaling out").
#   O2A_CELERY_BROKER=redis://broker-host:6379/0 deploy/celery/worker.sh [worker-name] [processes]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
name="${1:-o2a-$(hostname)}"
processes="${2:-1}"
: "${DAGSTER_HOME:?set DAGSTER_HOME to a folder holding deploy/celery/dagster.yaml}"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"  # makes dagster_celery_config importable
export O2A_EXECUTOR=celery
exec celery -A dagster_celery.app worker --queues dagster --hostname "$name@%h" \
  --concurrency "$processes" --prefetch-multiplier 1 --loglevel INFO
