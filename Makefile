# repligate — the two commands a new machine needs are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
DEMO_WEIGHTS ?= data/demo-weights
# The API suite's files that `make test` runs a second time on PostgreSQL + Celery (Redis)
# + S3 + the Redis bus: those whose answers go through the database, the queue, storage or
# events. Left out for time: input validation, model schemas and body fuzzing (answered
# before any row is written), body limits, the smoke test (test_api_predictions covers
# it); retention counts files under data_dir (test_s3_storage.py covers it on S3).
SCALED_TESTS := \
	tests/test_api_predictions.py tests/test_api_listing.py tests/test_api_files.py \
	tests/test_api_web_and_files.py tests/test_api_keys_and_cli.py tests/test_api_errors.py \
	tests/test_replicate_client.py tests/test_openai_images.py \
	tests/test_streams.py tests/test_webhooks.py tests/test_file_inputs.py tests/test_usage.py \
	tests/test_deadlines.py tests/test_progress.py tests/test_web_pages.py

.PHONY: install run test demo check lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned, so nothing can pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[local,dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/repligate serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	@# Best effort: the playground's browser tests need Debian's chromium (they skip without it).
	-@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium not installed: the playground's browser tests will skip"; }
	$(BIN)/python -m pytest -q -p no:cacheprovider
	@# The API suite again, unchanged, on the scaled-out stack (tests/conftest.py):
	@# PostgreSQL, Celery on Redis, S3 (moto's server) and the Redis event bus; skipped,
	@# naming the service, where one is absent.
	REPLIGATE_TEST_STACK=scaled $(BIN)/python -m pytest -q -p no:cacheprovider $(SCALED_TESTS)

demo: $(STAMP)
	$(BIN)/python -m repligate.testing.tiny_weights $(DEMO_WEIGHTS)
	REPLIGATE_WEIGHTS_DIR=$(DEMO_WEIGHTS) $(BIN)/repligate serve --host $(HOST) --port $(PORT)

check: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

bench: $(STAMP)
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
