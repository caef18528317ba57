# Build and developer targets.
#
# AWS SAM builds both functions with `BuildMethod: makefile` (see template.yaml): `sam build` runs
# `make build-RotationFunction` and `make build-BootstrapFunction` with ARTIFACTS_DIR set to the
# function's output folder. Those two targets need no SAM CLI and no Docker, so they can also be run
# directly:  make build-RotationFunction ARTIFACTS_DIR=/tmp/artifact
#
# Why not SAM's default python builder: it installs wheels for the *build* machine's interpreter and
# architecture unless the local Python matches the runtime exactly (or Docker is used). `pip install
# --platform manylinux2014_aarch64 --python-version 3.13 --only-binary=:all:` fetches the wheels built
# for the Lambda runtime (python3.13 on arm64/Graviton) from any machine, so the compiled libpq inside
# psycopg-binary always matches what runs in Lambda (no "No module named '_pg'"-style breakage).

PYTHON ?= python3
comma := ,

# Must agree with Runtime and Architectures in template.yaml (tests/test_packaging.py checks this).
LAMBDA_PYTHON_VERSION := 3.13
LAMBDA_PLATFORMS := manylinux_2_28_aarch64 manylinux2014_aarch64

# What the function needs at run time, besides what the Lambda runtime already provides.
#
# boto3/botocore are deliberately NOT bundled:
#  - the python3.13 Lambda runtime ships boto3 + botocore; bundling our own costs ~25 MB unzipped
#    (botocore's data files), which alone breaks the project's 20 MB artifact budget and adds
#    cold-start time (the runtime's copy is pre-compiled and already on disk);
#  - we only call long-stable Secrets Manager APIs (Get/PutSecretValue, DescribeSecret,
#    UpdateSecretVersionStage, CreateSecret, TagResource, DeleteSecret; RDS DescribeDBClusters/Instances) and client
#    options (connect_timeout, retries) that every runtime boto3 of the last years supports;
#  - the trade-off: a runtime update may change the boto3 version under us. If you need a pinned SDK,
#    add 'boto3==X' to LAMBDA_REQUIREMENTS below and accept the size (~+25 MB unzipped).
# aws-lambda-powertools does not depend on boto3 (only on jmespath/typing-extensions), and
# tests/test_packaging.py asserts that no boto3/botocore sneaks into the artifact.
LAMBDA_REQUIREMENTS := 'psycopg[binary]>=3.2.3,<4' 'aws-lambda-powertools>=3.0,<4'

# Bytecode: /var/task is read-only, so a module shipped without a .pyc is compiled at every cold start. The
# dependencies' modules the function imports get one, compiled by a Python of the runtime's version (bytecode
# is version-specific); rotation/ itself ships as source (tests/test_packaging.py). Figures and the size
# trade-off: docs/performance.md ("Bytecode"). Without such a Python the build warns and ships source only;
# REQUIRE_BYTECODE=1 makes that an error (for release builds).
# The first of these that runs and is of the runtime's version compiles (a pyenv shim may not run).
LAMBDA_PYTHON ?=
LAMBDA_PYTHON_CANDIDATES = $(LAMBDA_PYTHON) python$(LAMBDA_PYTHON_VERSION) \
	$(wildcard $(HOME)/.pyenv/versions/$(LAMBDA_PYTHON_VERSION)*/bin/python$(LAMBDA_PYTHON_VERSION))
REQUIRE_BYTECODE ?=
# What the rotation and bootstrap functions import (not the whole of Powertools: its other utilities would
# add ~2 MB of .pyc that no invocation reads).
POWERTOOLS_IMPORTED := aws_lambda_powertools/*.py aws_lambda_powertools/exceptions aws_lambda_powertools/logging \
	aws_lambda_powertools/metrics aws_lambda_powertools/shared aws_lambda_powertools/tracing \
	aws_lambda_powertools/warnings aws_lambda_powertools/utilities/__init__.py \
	aws_lambda_powertools/utilities/jmespath_utils
BYTECODE_TARGETS := psycopg psycopg_binary jmespath typing_extensions.py $(POWERTOOLS_IMPORTED)

# Folder holding this Makefile (SAM may run make from a scratch copy of the source tree).
ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))

SAM_VENV := $(ROOT)/.sam-venv
SAM := $(SAM_VENV)/bin/sam
SAM_REGION ?= us-east-1

.PHONY: help build-RotationFunction build-BootstrapFunction lambda-artifact test lint sam-venv build validate clean

help:
	@echo "make test        install the project with dev extras into the current python, run pytest"
	@echo "make lint        cfn-lint template.yaml + ruff"
	@echo "make sam-venv    create .sam-venv with the AWS SAM CLI (kept out of the project's deps)"
	@echo "make build       sam build (makefile build method, no Docker) -> .aws-sam/build"
	@echo "make validate    sam validate --lint"
	@echo "make build-RotationFunction ARTIFACTS_DIR=DIR   build one Lambda artifact without SAM"

# Both functions ship the same code and dependencies; only the handler differs (template.yaml).
build-RotationFunction: lambda-artifact
build-BootstrapFunction: lambda-artifact

# Absolute, because the recipe changes directory (ARTIFACTS_DIR=tmp works too).
ART = $(abspath $(ARTIFACTS_DIR))

lambda-artifact:
	@test -n "$(ARTIFACTS_DIR)" || { echo "ARTIFACTS_DIR is not set (sam build sets it)" >&2; exit 2; }
	mkdir -p "$(ART)"
	@# --no-compile: .pyc files compiled by *this* interpreter would be useless on 3.13 (see bytecode below).
	@# Platforms: Lambda python3.13 runs on Amazon Linux 2023 (glibc 2.34), so manylinux_2_28 wheels
	@# (psycopg-binary 3.3+) are valid; manylinux2014 alone would hold psycopg back at 3.2.x.
	PIP_ROOT_USER_ACTION=ignore $(PYTHON) -m pip install --quiet --disable-pip-version-check --no-compile \
		$(addprefix --platform ,$(LAMBDA_PLATFORMS)) --implementation cp \
		--python-version $(LAMBDA_PYTHON_VERSION) --only-binary=:all: \
		--upgrade --target "$(ART)" $(LAMBDA_REQUIREMENTS)
	@# The runtime package alone, without caches: rotation_tools/ (the CLI, the demo, the local test
	@# infrastructure) never runs in Lambda and stays out of the artifact and its attack surface.
	rm -rf "$(ART)/rotation"
	cd "$(ROOT)" && find rotation -type f -name '*.py' \
		-not -path '*/__pycache__/*' -not -path '*/tests/*' \
		-exec install -D -m 0644 '{}' "$(ART)/{}" ';'
	@# Optional CA bundle(s), e.g. the Amazon RDS global bundle, see docs/deploy.md (TLS).
	if [ -d "$(ROOT)/certs" ]; then mkdir -p "$(ART)/certs" && \
		find "$(ROOT)/certs" -maxdepth 1 -type f \( -name '*.pem' -o -name '*.crt' \) \
		-exec install -m 0644 '{}' "$(ART)/certs/" ';'; fi
	@# Drop what the function never uses at run time: console scripts, and the 1.7 MB of Swagger UI
	@# JavaScript/CSS that Powertools' API Gateway resolver serves (its .py modules stay importable).
	rm -rf "$(ART)/bin"
	rm -f "$(ART)"/aws_lambda_powertools/event_handler/openapi/swagger_ui/*.js \
		"$(ART)"/aws_lambda_powertools/event_handler/openapi/swagger_ui/*.css
	@# checked-hash: Python validates each .pyc against its source's hash, not its mtime (zip archives keep
	@# mtimes to 2 s, which would silently invalidate timestamp-based .pyc); hashing costs a few ms at most
	@# (psycopg + Powertools imported in 255 ms CPU against 252 unchecked, within the noise).
	@compiler=""; for candidate in $(LAMBDA_PYTHON_CANDIDATES); do \
		if "$$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != ($(subst .,$(comma),$(LAMBDA_PYTHON_VERSION))))' \
			>/dev/null 2>&1; then compiler="$$candidate"; break; fi; \
	done; \
	if [ -n "$$compiler" ]; then \
		cd "$(ART)" && "$$compiler" -m compileall -q -j0 --invalidation-mode checked-hash $(BYTECODE_TARGETS) >/dev/null \
		&& echo "bytecode compiled by $$compiler for: $(BYTECODE_TARGETS)"; \
	elif [ -n "$(REQUIRE_BYTECODE)" ]; then \
		echo "no Python $(LAMBDA_PYTHON_VERSION) found for the bytecode (set LAMBDA_PYTHON=/path/to/python$(LAMBDA_PYTHON_VERSION))" >&2; exit 2; \
	else \
		echo "WARNING: no Python $(LAMBDA_PYTHON_VERSION) found (set LAMBDA_PYTHON=...): the artifact ships without bytecode, and every cold start compiles psycopg and Powertools (+250 ms to the first setSecret, docs/performance.md)" >&2; \
	fi
	@du -sh --apparent-size "$(ART)" | sed 's/^/artifact size (unzipped): /'

test:
	cd "$(ROOT)" && $(PYTHON) -m pip install --quiet -e '.[dev]'
	cd "$(ROOT)" && $(PYTHON) -m pytest

lint:
	$(PYTHON) -c 'import sys; from cfnlint.runner import main; sys.argv[0] = "cfn-lint"; sys.exit(main())' "$(ROOT)/template.yaml"
	$(PYTHON) -m ruff check "$(ROOT)"
	cd "$(ROOT)" && $(PYTHON) -m mypy

$(SAM):
	$(PYTHON) -m venv "$(SAM_VENV)"
	"$(SAM_VENV)/bin/python" -m pip install --quiet --disable-pip-version-check aws-sam-cli

sam-venv: $(SAM)

# --build-in-source: make runs in this folder instead of a scratch copy of it (SAM would otherwise
# copy .venv, .sam-venv and .git for every function).
build: $(SAM)
	cd "$(ROOT)" && SAM_CLI_TELEMETRY=0 "$(SAM)" build --build-in-source --parallel

validate: $(SAM)
	cd "$(ROOT)" && SAM_CLI_TELEMETRY=0 "$(SAM)" validate --lint --region $(SAM_REGION)

clean:
	rm -rf .aws-sam
