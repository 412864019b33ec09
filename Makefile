# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test lint records install clean figure5

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,beam]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check exif_keras tests

data/records/manifest.json: | $(STAMP)
	$(PY) -m exif_keras.make_records

records: data/records/manifest.json

demo: $(STAMP) data/records/manifest.json
	$(PY) -m exif_keras.train --flagfile=pipelines/demo.flags

# The paper's figure 5 on the sample: accuracy against the number of patches (k = 1, 2, 4, 8; two
# seeds), the demo_patches study (pipelines/studies/). Rerun after an interruption to continue.
figure5: $(STAMP) data/records/manifest.json
	$(PY) -m exif_keras.study --flagfile=pipelines/studies/demo_patches.flags
	@echo "figure 5 (sample): runs/studies/demo_patches/figure.png, table: runs/studies/demo_patches/results.md"

# Lint (ruff: pyflakes, import order, bugbear) first, then the suite.
test: $(STAMP)
	$(VENV)/bin/ruff check exif_keras tests
	$(PY) -m pytest

clean:
	rm -rf data runs build *.egg-info
