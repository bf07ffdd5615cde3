# cellops: one command to set up and run everything on the built-in data (`make demo`), one for the tests
# (`make test`). Every target creates and uses the project's own .venv.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
UI_PORT ?= 5000
DASHBOARD_PORT ?= 8237
SERVE_PORT ?= 3000
DOCS_PORT ?= 8000
# pytest-xdist workers for `make test` (each module runs whole on one worker: tests/conftest.py).
TEST_WORKERS ?= 2
# The team stack's folder (databases, logs, secrets); as root it must be reachable by the postgres and mysql users.
TEAM_DIR ?= .team
MLFLOW_URI := sqlite:///$(CURDIR)/mlruns/mlflow.db
# dvc.yaml's analysis stages (its *_training stages train models: `dvc repro unet_training`).
REPORT_STAGES := colonies_report nuclei_report calcium_report

# Telemetry off everywhere (entry points set these too).
export ZENML_ANALYTICS_OPT_IN := false
export BENTOML_DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export MLFLOW_ENABLE_TELEMETRY := false
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := true
export PYTHONUNBUFFERED := 1
# The venv's tools first on PATH, so that what DVC stages and pipelines call (`cellops`, `dvc`...) is found
# without activating the venv.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help setup configs data data-accept train deploy train-classifier deploy-classifier train-maskrcnn \
	train-maskrcnn-nuclei deploy-maskrcnn analyses reports demo deploy-all serve serve-unet serve-classifier serve-maskrcnn ui dashboard \
	dashboard-stop batch-inference monitor team-deps team-stack team-stack-down team-status browser qt-deps test bench bench-table docs docs-serve lock clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-22s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

setup: $(VENV)/.installed  ## create .venv, install the lock file, register and activate the `cellops` ZenML stack
	$(BIN)/python scripts/setup_stack.py

data: $(VENV)/.installed  ## write the built-in datasets under data/, check them file by file against data.dvc, cache them in DVC
	$(BIN)/cellops generate-data --params params.yaml --out data
	$(BIN)/cellops check-data --data data --manifest data.files.json --dvc-file data.dvc
	$(BIN)/dvc add -q data
	$(BIN)/dvc status data.dvc

configs: $(VENV)/.installed  ## write the derived configs (configs/*_full.yaml, tests/configs/*_tiny.yaml) from their overrides
	$(BIN)/cellops configs

data-accept: $(VENV)/.installed  ## after changing params.yaml or a generator on purpose: rewrite data/, data.dvc and data.files.json
	$(BIN)/cellops generate-data --params params.yaml --out data --force
	$(BIN)/dvc add -q data
	$(BIN)/cellops check-data --data data --manifest data.files.json --dvc-file data.dvc --update

train: setup  ## run the U-Net training pipeline (configs/unet.yaml)
	$(BIN)/zenml pipeline run pipelines.unet.training_pipeline -c configs/unet.yaml

deploy: setup  ## import the champion U-Net into BentoML and build its bento
	$(BIN)/zenml pipeline run pipelines.unet.deployment_pipeline -c configs/unet_deploy.yaml

train-classifier: setup  ## train and compare the endothelial-cell classifiers (configs/classifier.yaml)
	$(BIN)/zenml pipeline run pipelines.classifier.training_pipeline -c configs/classifier.yaml

deploy-classifier: setup  ## import the champion classifier into BentoML and build its bento
	$(BIN)/zenml pipeline run pipelines.classifier.deployment_pipeline -c configs/classifier_deploy.yaml

train-maskrcnn: setup  ## train Mask R-CNN on the colonies, from scratch vs pretrained on nuclei (configs/maskrcnn.yaml)
	$(BIN)/zenml pipeline run pipelines.maskrcnn.training_pipeline -c configs/maskrcnn.yaml

train-maskrcnn-nuclei: setup  ## train the nuclei Mask R-CNN, registered as cellops-maskrcnn-nuclei (configs/maskrcnn_nuclei.yaml)
	$(BIN)/zenml pipeline run pipelines.maskrcnn.training_pipeline -c configs/maskrcnn_nuclei.yaml

deploy-maskrcnn: setup  ## import the champion colony Mask R-CNN into BentoML and build its bento
	$(BIN)/zenml pipeline run pipelines.maskrcnn.deployment_pipeline -c configs/maskrcnn_deploy.yaml

deploy-all: setup  ## every champion and the classical analyses -> bentos, one pipeline run (configs/deploy.yaml)
	$(BIN)/zenml pipeline run pipelines.deploy.deploy_pipeline -c configs/deploy.yaml

analyses: setup  ## run the classical pipelines: colonies, nuclei, calcium
	$(BIN)/zenml pipeline run pipelines.colonies.colony_pipeline -c configs/colonies.yaml
	$(BIN)/zenml pipeline run pipelines.nuclei.nuclei_pipeline -c configs/nuclei.yaml
	$(BIN)/zenml pipeline run pipelines.calcium.calcium_pipeline -c configs/calcium.yaml

reports: $(VENV)/.installed  ## dvc repro of the classical reports from data/ and configs/, then their metrics
	$(BIN)/dvc repro $(REPORT_STAGES)
	$(BIN)/dvc metrics show $(foreach s,$(REPORT_STAGES),reports/$(s:_report=)/metrics.json)

demo: setup data train train-classifier train-maskrcnn deploy-all analyses  ## everything, on the built-in data
	@echo "demo done: 'make ui' for the MLflow UI, 'make serve' to serve every champion and the classical analyses"

serve: $(VENV)/.installed  ## serve every bento on $(HOST): U-Net :3000, classifier :3001, Mask R-CNN :3002, classical :3003 (Ctrl-C stops them all)
	@trap 'kill 0' INT TERM EXIT; \
	$(BIN)/bentoml serve cellops-unet:latest --host $(HOST) --port 3000 & \
	$(BIN)/bentoml serve cellops-classifier:latest --host $(HOST) --port 3001 & \
	$(BIN)/bentoml serve cellops-maskrcnn:latest --host $(HOST) --port 3002 & \
	$(BIN)/bentoml serve cellops-classical:latest --host $(HOST) --port 3003 & \
	wait

serve-unet: $(VENV)/.installed  ## serve the latest cellops-unet bento on $(HOST):$(SERVE_PORT)
	$(BIN)/bentoml serve cellops-unet:latest --host $(HOST) --port $(SERVE_PORT)

serve-classifier: $(VENV)/.installed  ## serve the latest cellops-classifier bento on $(HOST):$(SERVE_PORT)
	$(BIN)/bentoml serve cellops-classifier:latest --host $(HOST) --port $(SERVE_PORT)

serve-maskrcnn: $(VENV)/.installed  ## serve the latest cellops-maskrcnn bento on $(HOST):$(SERVE_PORT)
	$(BIN)/bentoml serve cellops-maskrcnn:latest --host $(HOST) --port $(SERVE_PORT)

ui: $(VENV)/.installed  ## MLflow UI over the project's store on $(HOST):$(UI_PORT)
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_URI) --host $(HOST) --port $(UI_PORT)

dashboard: setup  ## ZenML dashboard: a local ZenML server (zenml[server]) on $(HOST):$(DASHBOARD_PORT) over the project's runs
	ZENML_AUTO_OPEN_DASHBOARD=false $(BIN)/zenml login --local --ip-address $(HOST) --port $(DASHBOARD_PORT)

dashboard-stop:  ## stop the local ZenML server; the client goes back to the local store
	$(BIN)/zenml logout --local

batch-inference: setup  ## batch inference with a registered model over a folder, resumable (configs/batch_inference.yaml)
	$(BIN)/zenml pipeline run pipelines.batch_inference.batch_inference_pipeline -c configs/batch_inference.yaml

monitor: setup  ## drift report of the services' request logs against the model's OOD reference (configs/monitoring.yaml)
	$(BIN)/zenml pipeline run pipelines.monitoring.monitoring_pipeline -c configs/monitoring.yaml

team-deps:  ## Debian's postgresql and mariadb-server for the team stack (apt-get, as root; skipped where not root)
	@if [ -x /usr/sbin/mariadbd ] && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "postgresql and mariadb-server installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q postgresql mariadb-server >/dev/null || \
		{ apt-get update -q >/dev/null && apt-get install -y -q postgresql mariadb-server >/dev/null; }; \
	else echo "no postgresql/mariadb-server and no root for apt-get: the team stack test will be skipped"; fi

team-stack: setup team-deps  ## shared servers on 127.0.0.1: MLflow on PostgreSQL, ZenML on MariaDB, the `cellops-team` stack (.team/)
	$(BIN)/python scripts/team_stack.py up --dir $(TEAM_DIR)
	@echo "use it from a shell: set -a; . $(TEAM_DIR)/client.env; set +a   (then zenml pipeline run ..., cellops models)"

team-stack-down:  ## stop the team stack's servers and databases (data and passwords in .team/ are kept)
	$(BIN)/python scripts/team_stack.py down --dir $(TEAM_DIR)

team-status:  ## which of the team stack's services answer
	$(BIN)/python scripts/team_stack.py status --dir $(TEAM_DIR)

browser:  ## Debian's chromium and chromium-driver for the browser tests (apt-get, as root; skipped where not root)
	@if [ -x /usr/bin/chromium ]; then echo "chromium: $$(/usr/bin/chromium --version 2>/dev/null)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q chromium chromium-driver >/dev/null || \
		{ apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }; \
	else echo "no /usr/bin/chromium and no root for apt-get: the browser tests will be skipped"; fi

# What Qt (PyQt6's wheel brings Qt itself) needs from the system to draw napari's OpenGL canvas without a screen:
# the X and GL client libraries, Mesa's software OpenGL, a font, and Xvfb, the virtual X server the napari tests start.
QT_DEPS := xvfb libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 libdbus-1-3 libfontconfig1 fonts-dejavu-core \
	libxkbcommon0 libxkbcommon-x11-0 libx11-xcb1 libxcb-cursor0 libxcb-glx0 libxcb-icccm4 libxcb-image0 \
	libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-sync1 libxcb-xfixes0 libxcb-xkb1

qt-deps:  ## Debian's Xvfb and the X/OpenGL libraries Qt needs, for napari and its tests (apt-get, as root; told where not root)
	@if dpkg -s $(QT_DEPS) >/dev/null 2>&1; then echo "Xvfb and Qt's system libraries installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q --no-install-recommends $(QT_DEPS) >/dev/null || \
		{ apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $(QT_DEPS) >/dev/null; }; \
	else echo "no root for apt-get: install $(QT_DEPS) (the napari tests need Xvfb and Qt needs the libraries)"; fi

test: setup browser team-deps qt-deps  ## set up as for the demo (and Debian's chromium, postgresql, mariadb-server for the browser and team-stack tests, Xvfb for napari's), then run the test suite
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

bench: $(VENV)/.installed  ## every benchmark against its peers (after the demo), then one table of the results (outputs/benchmarks/*.json)
	$(BIN)/python benchmarks/unet_inference.py
	$(BIN)/python benchmarks/unet_runtimes.py
	$(BIN)/python benchmarks/classifier.py
	$(BIN)/python benchmarks/classifier_runtimes.py
	$(BIN)/python benchmarks/maskrcnn.py
	$(BIN)/python benchmarks/maskrcnn_runtimes.py
	$(BIN)/python benchmarks/colonies.py
	$(BIN)/python benchmarks/robustness.py
	$(BIN)/python benchmarks/table.py

bench-table:  ## print the table of the benchmark results already in outputs/benchmarks
	$(BIN)/python benchmarks/table.py

docs: $(VENV)/.installed  ## build the documentation site (site/): mkdocs build --strict, API reference from the docstrings
	DISABLE_MKDOCS_2_WARNING=true NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(VENV)/.installed  ## serve the docs on http://$(HOST):$(DOCS_PORT)
	DISABLE_MKDOCS_2_WARNING=true NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a $(HOST):$(DOCS_PORT)

lock: $(BIN)/python  ## regenerate requirements.lock from the current .venv
	{ head -3 requirements.lock; $(BIN)/pip freeze --exclude-editable | grep -v '^cellops'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:  ## remove runs and outputs (not data/, not the venv)
	rm -rf outputs mlruns .zen
