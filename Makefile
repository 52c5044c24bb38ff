# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MTL_HOME ?= .mtl
STAMP := $(VENV)/.installed

.PHONY: venv demo demo-next test bench airflow-ui mlflow-ui serve serve-bench clean

venv: $(STAMP)

# torch goes first from its pinned CPU wheel: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,text]'
	touch $(STAMP)

# ---- demo: a small synthetic shop, one nightly DAG run through Airflow, everything under $(MTL_HOME) ----
HOME_ABS := $(abspath $(MTL_HOME))
DEMO_START ?= 2026-01-01
DEMO_DAYS ?= 15  # the demo runs the 14th; `make demo-next` runs the 15th as the second night
DEMO_DATE ?= 2026-01-14
DEMO_SIZE ?= --impressions-per-day 12000 --users 3000 --items 800
AIRFLOW_ENV := MTL_HOME=$(HOME_ABS) MTL_LANDING=$(HOME_ABS)/landing \
	AIRFLOW_HOME=$(HOME_ABS)/airflow \
	AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=sqlite:///$(HOME_ABS)/airflow/airflow.db \
	AIRFLOW__CORE__PARALLELISM=4 \
	AIRFLOW__API__HOST=127.0.0.1 \
	MTL_LANDING_WAIT_HOURS=0 \
	PATH=$(abspath $(BIN)):$$PATH

demo: venv
	@echo "== generating $(DEMO_DAYS) days of synthetic landing data under $(HOME_ABS)/landing"
	$(BIN)/mtl generate --out $(HOME_ABS)/landing --days $(DEMO_DAYS) --start-date $(DEMO_START) --seed 7 $(DEMO_SIZE) >/dev/null
	@mkdir -p $(HOME_ABS)/airflow
	@echo "== airflow db migrate; pool gpu (1 slot); Airflow home $(HOME_ABS)/airflow"
	@$(AIRFLOW_ENV) airflow db migrate >/dev/null
	@$(AIRFLOW_ENV) airflow pools set gpu 1 "training tasks take turns (raise with more GPUs/cores)" >/dev/null
	@echo "== airflow dags test mtl_retrain $(DEMO_DATE)   (log: $(HOME_ABS)/demo-dag.log)"
	@$(AIRFLOW_ENV) airflow dags test mtl_retrain $(DEMO_DATE) > $(HOME_ABS)/demo-dag.log 2>&1 || \
		{ tail -50 $(HOME_ABS)/demo-dag.log; echo "DAG run failed; full log: $(HOME_ABS)/demo-dag.log"; exit 1; }
	@$(AIRFLOW_ENV) $(BIN)/mtl show --date $(DEMO_DATE) --home $(HOME_ABS) --brief 2>/dev/null
	@echo "== UIs: 'make airflow-ui' (http://127.0.0.1:8080, user admin; its first start writes the password to"
	@echo "         $(HOME_ABS)/airflow/simple_auth_manager_passwords.json.generated)"
	@echo "        'make mlflow-ui'   (http://127.0.0.1:5000)   'make serve' (the champion on http://127.0.0.1:5001)"

# MTL_LANDING_WAIT_HOURS=0 above: the demo landing never gets "yesterday", so the nightly slot that unpausing
# starts is skipped at once instead of waiting 6 h.
# The second night: the same landing folder (the generator is deterministic), the next day. The new version is
# compared with the first one (now the champion, if its gate passed) on the new test day.
demo-next:
	$(MAKE) demo DEMO_DATE=2026-01-15

test: venv
	$(BIN)/pytest -q

# Airflow's own UI on loopback (standalone binds 0.0.0.0 unless told), this project's DAGs, few worker
# processes (standalone starts `parallelism` of them, 32 by default: about 5 GB).
airflow-ui: venv
	@mkdir -p $(HOME_ABS)/airflow
	@$(AIRFLOW_ENV) airflow db migrate >/dev/null
	@$(AIRFLOW_ENV) airflow pools set gpu 1 "training tasks take turns" >/dev/null
	@test -s $(HOME_ABS)/airflow/jwt_secret || \
		$(BIN)/python -c 'import secrets; print(secrets.token_hex(32))' > $(HOME_ABS)/airflow/jwt_secret
	@echo "== http://127.0.0.1:8080  user admin, password: $(HOME_ABS)/airflow/simple_auth_manager_passwords.json.generated"
	$(AIRFLOW_ENV) AIRFLOW__API_AUTH__JWT_SECRET=$$(cat $(HOME_ABS)/airflow/jwt_secret) airflow standalone

# The champion as a REST service on loopback: POST raw impression rows to /invocations (README "Serving").
# No `venv` prerequisite: serving must not reinstall anything; the venv's bin goes first on PATH because
# `mlflow models serve` starts `uvicorn` by name.
SERVE_PORT ?= 5001
SERVE_MODEL ?= models:/ecommerce-mtl@champion
serve:
	@test -x $(BIN)/mlflow || { echo "no $(BIN)/mlflow: run 'make venv' (or 'make demo') first"; exit 1; }
	@test -f $(HOME_ABS)/mlflow.db || { echo "no registry at $(HOME_ABS)/mlflow.db: run 'make demo' first"; exit 1; }
	@echo "== serving $(SERVE_MODEL) from $(HOME_ABS) on http://127.0.0.1:$(SERVE_PORT)/invocations"
	MLFLOW_TRACKING_URI=sqlite:///$(HOME_ABS)/mlflow.db PATH=$(abspath $(BIN)):$$PATH \
		$(BIN)/mlflow models serve -m $(SERVE_MODEL) --env-manager local -h 127.0.0.1 -p $(SERVE_PORT) -w 1

# p50/p99 latency of 1- and 50-row requests against the served champion (bench/serve_bench.py).
serve-bench:
	$(BIN)/python bench/serve_bench.py --home $(BENCH_DIR)/serve

mlflow-ui: venv
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///$(HOME_ABS)/mlflow.db \
		--default-artifact-root $(HOME_ABS)/mlartifacts

clean:
	rm -rf $(HOME_ABS)

# Training throughput per architecture, one JSON line each (bench/train_bench.py). Generates a 14-day,
# 2.1M-impression landing folder once under $(BENCH_DIR). Override e.g. BENCH_ARGS='--peer-config --models mmoe,ple'
# or add '--set train.precision=bf16' (CPUs with AVX512-BF16: ~1.8x faster, same AUC here).
BENCH_DIR ?= .mtl/bench
BENCH_ARGS ?= --peer-config
bench: venv
	$(BIN)/python bench/train_bench.py --work $(BENCH_DIR) $(BENCH_ARGS)
