# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# `make run LISTEN=127.0.0.1:6000 ADMIN=127.0.0.1:6001` when the default ports are taken.
LISTEN ?= 127.0.0.1:50051
ADMIN ?= 127.0.0.1:50052

.PHONY: run test test-floors lint typecheck unit proto schemas bench bench-perf clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt --upgrade pip
	# PIP_CONSTRAINT also pins the isolated build environment (setuptools).
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/python -m pip install -q -e '.[local,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/attrgate serve --local-cognito --insecure --policies policies --region us-east-1 \
		--listen $(LISTEN) --admin-listen $(ADMIN)

test: lint typecheck unit

# The whole suite against the lowest version pyproject.toml allows of every direct dependency
# with a lower bound (scripts/floors.py asks the package index), in a venv of its own: a floor is
# a promise. Not the Dockerfile replay, the stub-staleness check, the comparison with the AWS
# CLI and the manifests' schema and dashboard checks, which need the dev tools, nor the schema-staleness check
# (another pydantic may word the same JSON Schema otherwise).
# .ci/run runs it after `make test` (about ten minutes).
FLOORS := .venv-floors
test-floors: $(STAMP)
	rm -rf $(FLOORS)
	$(PYTHON) -m venv $(FLOORS)
	$(BIN)/python scripts/floors.py > $(FLOORS)/floors.txt
	$(FLOORS)/bin/python -m pip install -q -c $(FLOORS)/floors.txt -e '.[local]' \
		"$$(grep '^pytest==' constraints.txt)" "$$(grep '^hypothesis==' constraints.txt)" \
		"$$(grep '^jsonschema==' constraints.txt)"
	$(FLOORS)/bin/python -m pip list 2>/dev/null | grep -E '^(boto3|botocore|protobuf|pydantic) '
	$(FLOORS)/bin/python -m pytest -q -p no:cacheprovider \
		--ignore=tests/test_dockerfile.py --ignore=tests/test_proto_stubs.py \
		--ignore=tests/test_schema_files.py --ignore=tests/test_call_awscli.py \
		--ignore=tests/test_deploy.py --ignore=tests/test_grafana_dashboard.py

lint: $(STAMP)
	$(BIN)/ruff check server tests bench scripts
	$(BIN)/ruff format --check server tests bench scripts

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q

# Regenerate the committed protobuf stubs (a test fails when they are stale).
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=server --pyi_out=server \
		--grpc_python_out=server proto/attrgate/v1/attrgate.proto

# Regenerate the committed JSON Schemas from the policy models (a test fails when they are stale).
schemas: $(STAMP)
	$(BIN)/attrgate schema --output-dir schemas/v1

clean:
	rm -rf $(VENV) $(FLOORS) .pytest_cache .mypy_cache .ruff_cache

# Benchmarks print measured figures beside a baseline; they are not part of `make test`.
bench: $(STAMP)
	$(BIN)/python bench/bench_engine.py
	$(BIN)/python bench/bench_observability.py
	$(BIN)/python bench/bench_sms_store.py
	$(BIN)/python bench/bench_policytest.py
	$(BIN)/python bench/bench_quota.py
	$(BIN)/python bench/bench_perf.py

# attrgate's CPU per request and throughput beside boto3 and bare grpc.aio references, judged
# against issue 12's targets (under five minutes; results in bench/results/perf.json).
bench-perf: $(STAMP)
	$(BIN)/python bench/bench_perf.py
