# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export TF_CPP_MIN_LOG_LEVEL ?= 2
# pytest-xdist workers for `make test`, each taking whole test files (`--dist loadfile`, so a
# module's fixtures are built once): 417 s -> 263 s for the suite on 2 cores (BUILD.md).
TEST_WORKERS ?= 2

.PHONY: demo test lint records install clean figure5 serve

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,beam,serve]'
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

# The page for a person with a photo (issue 18) on the demo's export: http://127.0.0.1:7860
# (after `make demo`; Ctrl-C stops it). Any other export: python -m exif_keras.serve --model=...
serve: $(STAMP)
	@test -d models/exif_shutter || { echo "no models/exif_shutter: run make demo first"; exit 2; }
	$(PY) -m exif_keras.serve --model=models/exif_shutter

# Lint (ruff: pyflakes, import order, bugbear) first, then the suite.
test: $(STAMP)
	$(VENV)/bin/ruff check exif_keras tests
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf data runs build *.egg-info
