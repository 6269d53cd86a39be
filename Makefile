# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# `make run LISTEN=127.0.0.1:6000 ADMIN=127.0.0.1:6001` when the default ports are taken.
LISTEN ?= 127.0.0.1:50051
ADMIN ?= 127.0.0.1:50052

.PHONY: run test test-floors lint typecheck unit proto bench clean

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

# The lowest versions pyproject.toml allows for every direct dependency with a lower bound, in a
# venv of their own, against the tests whose behaviour hangs on them (pytest -m floors: retries,
# deadlines, undecodable answers). .ci/run runs it after `make test`; about two minutes.
FLOORS := .venv-floors
test-floors: $(STAMP)
	rm -rf $(FLOORS)
	$(PYTHON) -m venv $(FLOORS)
	$(BIN)/python scripts/floors.py > $(FLOORS)/floors.txt
	$(FLOORS)/bin/python -m pip install -q -c $(FLOORS)/floors.txt -e . \
		"$$(grep '^pytest==' constraints.txt)"
	$(FLOORS)/bin/python -m pip list 2>/dev/null | grep -E '^(boto3|botocore) '
	$(FLOORS)/bin/python -m pytest -q -p no:cacheprovider -m floors tests/test_upstream.py

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

clean:
	rm -rf $(VENV) $(FLOORS) .pytest_cache .mypy_cache .ruff_cache

# Benchmarks print measured figures beside a baseline; they are not part of `make test`.
bench: $(STAMP)
	$(BIN)/python bench/bench_engine.py
	$(BIN)/python bench/bench_observability.py
	$(BIN)/python bench/bench_sms_store.py
