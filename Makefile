# The two commands a new machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA := workspace_data

.PHONY: setup demo test test-fast bench clean dagster-ui ablation

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch first, so nothing pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	# 12 subjects: the subject split puts 10 in train (sim0008 validation, sim0011 test)
	$(VENV)/bin/o2a simulate $(DATA)/sim --subjects 12 --size 384 --seed 11
	# every session asset, the dataset index, the avatar prior, then its few-shot report (cpu presets)
	$(VENV)/bin/o2a pipeline run --captures $(DATA)/sim/captures \
		--storage file://$(DATA)/derived --dagster-home $(DATA)/dagster_home
	@echo "captures:      $(DATA)/sim/captures"
	@echo "ground truth:  $(DATA)/sim/ground_truth"
	@echo "derived:       $(DATA)/derived"
	@echo "dataset index: $(DATA)/derived/dataset/index.parquet"
	@echo "avatar prior:  $(DATA)/derived/prior/anchored/checkpoint.pt"
	@echo "prior report:  $(DATA)/derived/prior/anchored/report.json, curves.png"
	@echo "browse runs:   DAGSTER_HOME=$$PWD/$(DATA)/dagster_home O2A_CAPTURES_ROOT=$(DATA)/sim/captures \\"
	@echo "               O2A_STORAGE_URL=file://$(DATA)/derived $(VENV)/bin/dagster dev -w workspace.yaml"
	@echo "few-shot scores: $(DATA)/derived/fewshot/anchored/scores.parquet"
	@echo "few-shot report: $(DATA)/derived/fewshot/anchored/report.html"
	$(MAKE) --no-print-directory ablation

ablation: setup
	# the default balance-ablation spec on the demo's index (`make demo` runs it last; alone, after a demo)
	$(VENV)/bin/o2a ablation run --storage file://$(DATA)/derived --dagster-home $(DATA)/dagster_home
	@echo "ablation report: $(DATA)/derived/ablations/report.html"

# two pytest-xdist workers: tests sharing a session fixture (the simulated sessions, the 12-subject
# pipeline and its prior) stay on one worker (tests/conftest.py), the rest run beside them
TEST_WORKERS ?= 2

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15

# the edit-test loop: everything but the tests marked slow (simulated pipeline, trained prior)
test-fast: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not slow"

bench: setup
	$(PY) -m benchmarks.ingest
	$(PY) -m benchmarks.calibration
	$(PY) -m benchmarks.fitting
	$(PY) -m benchmarks.shards
	$(PY) -m benchmarks.prior
	$(PY) -m benchmarks.anchor_search
	$(PY) -m benchmarks.prior_profile
	$(PY) -m benchmarks.fewshot
	$(PY) -m benchmarks.scale

clean:
	rm -rf $(DATA)
