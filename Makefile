# make demo: set up .venv and run the pipeline on the bundled demo collection.
# make test: set up .venv and run the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test clean

$(BIN)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

demo: $(BIN)/.installed
	$(BIN)/luigi --module tasks Similarities --local-scheduler
	@echo "similarities written to artifacts/similarities.hdf5 (demo: random weights, see README)"

test: $(BIN)/.installed
	$(BIN)/python -m pytest

clean:
	rm -rf artifacts/inventory.h5 artifacts/features.h5 artifacts/reducer.h5 artifacts/codebook.h5 \
	       artifacts/histograms.h5 artifacts/similarities.hdf5 artifacts/features
