# make demo: set up .venv and run the pipeline on the bundled demo collection.
# make test: set up .venv and run the default tier of the tests (minutes; not the slow ones).
# make test-all: every test, as .ci/run runs them.
# make quality: the quality benchmark on the proxy collections (docs/quality.md).
# make lint: ruff's lint and format checks, as .ci/run runs them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the tests on every core (pytest-xdist), a test module to one worker (its shared runs made once)
PARALLEL := -n auto --dist loadfile

.PHONY: demo test test-all lint quality clean

$(BIN)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python -m pipeline.demo cms artifacts/demo-cms.sqlite
	$(BIN)/luigi --module tasks Nightly --local-scheduler
	@echo "similarities: artifacts/similarities.hdf5, loaded into table image_similarity of artifacts/demo-cms.sqlite; run report: artifacts/run_report.json; visual report: artifacts/report.html (demo: random weights, see README)"
	@echo "the web app: $(BIN)/similar-images-serve, then open http://127.0.0.1:8000/ (a curator to judge with: $(BIN)/similar-images-serve --add-user NAME)"

test: $(BIN)/.installed
	$(BIN)/python -m pytest -m "not slow" $(PARALLEL)

test-all: $(BIN)/.installed
	$(BIN)/python -m pytest --durations=15 $(PARALLEL)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

quality: $(BIN)/.installed
	@test -d /usr/share/wallpapers -a -d /usr/share/backgrounds/gnome || \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends plasma-workspace-wallpapers gnome-backgrounds)
	$(BIN)/python -m benchmarks.quality

clean:
	find artifacts -mindepth 1 ! -name .gitkeep -delete
