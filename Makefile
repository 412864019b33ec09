# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test records install clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,beam]'
	touch $(STAMP)

install: $(STAMP)

data/records/manifest.json: | $(STAMP)
	$(PY) -m exif_keras.make_records

records: data/records/manifest.json

demo: $(STAMP) data/records/manifest.json
	$(PY) -m exif_keras.train --flagfile=pipelines/demo.flags

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf data runs build *.egg-info
