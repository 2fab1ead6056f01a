# llm-router: `make demo` and `make test` work on a fresh machine (they create .venv themselves).
# Python 3.12+ where the machine has it (asyncio's eager tasks), else python3: scripts/python.sh.
PYTHON ?= $(shell scripts/python.sh)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
KAFKA_DIR ?= $(CURDIR)/.kafka

.PHONY: venv install redis-server test test-unit test-integration test-reliability test-kafka demo bench bench-instructions eval eval-blind kafka kafka-stop schemas compose-check k8s-check k8s-schemas wheel-check lint clean

# Quiet on stdout (progress goes to stderr): `make bench`'s stdout is JSON lines only, even on a fresh clone.
$(STAMP): pyproject.toml
	@echo "installing into $(VENV) ..." >&2
	@$(PYTHON) -m venv $(VENV) >&2
	@$(BIN)/pip install --quiet --upgrade pip >&2
	@$(BIN)/pip install --quiet -e '.[test,demo]' >&2
	@touch $(STAMP)

venv install: $(STAMP)

## test, test-unit, test-integration and test-reliability run in 3 pytest-xdist worker processes, each with its own
## embedded broker and Redis; loadgroup runs the tests of the `xdist_group` "heavy" (rate limits measured, several
## replicas killed) on one worker, one after another, from the start. `make test PARALLEL=` runs in one process.
## test-kafka stays serial: it has one Apache Kafka broker, which some of its tests restart.
PARALLEL ?= -n 3 --dist loadgroup

## The whole suite: unit tests and integration tests on the embedded broker (or $KAFKA_BOOTSTRAP_SERVERS), but
## the `apache_kafka` ones, which restart their broker (`make test-kafka` runs them).
test: $(STAMP) redis-server
	$(BIN)/python -m pytest $(PARALLEL) -m "not apache_kafka"

test-unit: $(STAMP) redis-server
	$(BIN)/python -m pytest $(PARALLEL) -m "not integration"

test-integration: $(STAMP) redis-server
	$(BIN)/python -m pytest $(PARALLEL) -m "integration and not apache_kafka"

## The reliability suite alone: on the embedded broker, then on Apache Kafka.
test-reliability: $(STAMP) redis-server
	$(BIN)/python -m pytest $(PARALLEL) -m "reliability and not apache_kafka"
	scripts/test-on-kafka.sh $(BIN)/python -m pytest -m reliability

## The integration tests on Apache Kafka (KRaft, single node) from Maven Central jars (not the
## `one_broker` ones, whose figures do not depend on the broker).
test-kafka: $(STAMP) redis-server
	scripts/test-on-kafka.sh $(BIN)/python -m pytest -m "integration and not one_broker"

## Debian's redis-server, which the shared rate limiter's tests start on loopback.
redis-server:
	scripts/redis.sh install

demo: $(STAMP)
	$(BIN)/llm-router demo

## Benchmarks: JSON lines on stdout (key `bench`), a readable table on stderr.
bench: $(STAMP)
	@$(BIN)/python -m bench

## Instructions a job, worker against raw floor, counted by valgrind (deterministic; about 4 minutes).
bench-instructions: $(STAMP)
	@$(BIN)/python -m bench instructions

## The routing policies compared on the shipped workload (Kafka, worker, simulator).
eval: $(STAMP)
	$(BIN)/llm-router eval bench/workload.jsonl

## The same blind (the jobs without their checks, scored by the eval), on the shipped simulator and on one whose
## accuracies differ from the router's priors.
eval-blind: $(STAMP)
	$(BIN)/llm-router eval --blind bench/workload.jsonl
	$(BIN)/llm-router eval --blind --simulator-config config/simulator-shifted.toml bench/workload.jsonl

## Apache Kafka (KRaft) on loopback from Maven Central jars; prints its bootstrap address.
kafka:
	scripts/kafka.sh start --dir $(KAFKA_DIR)

kafka-stop:
	scripts/kafka.sh stop --dir $(KAFKA_DIR)

schemas: $(STAMP)
	$(BIN)/llm-router schemas

## Lint and types: ruff (lint and format check) over the Python of the repository, mypy over worker/,
## and the layer contract of worker/ (import-linter, pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check worker tests bench scripts
	$(BIN)/ruff format --check worker tests bench scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

## Validates docker-compose.yml (Debian's docker-compose is installed when no compose is at hand).
compose-check:
	scripts/compose-check.sh

## Validates deploy/k8s/ (kustomize build, then kubeconform -strict against deploy/k8s/schemas/, offline); builds
## the pinned kustomize and kubeconform into .tools/ the first time (Go and the Go module proxy).
k8s-check:
	scripts/k8s-check.sh

## Writes deploy/k8s/schemas/ from Kubernetes' OpenAPI document and KEDA's CRD (Go module proxy).
k8s-schemas: $(STAMP)
	$(BIN)/python scripts/k8s-schemas.py

## Builds the wheel, installs it with the demo extra into a fresh virtualenv and runs `llm-router demo`
## outside the repository (downloads the dependencies from PyPI).
wheel-check:
	PYTHON=$(PYTHON) scripts/wheel-check.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis $(KAFKA_DIR) .tools
