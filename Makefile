# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= configs/demo.yaml
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install test lint format demo bench bench-quality bench-scaling bench-device bench-memory mutation download embed cluster write attack report run clean

install: $(STAMP)

# Re-runs only when the dependency pins change, so a second `make install` takes seconds.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,ray]'
	$(BIN)/python -m pip check
	touch $(STAMP)

# pytest's exit code 5 means "no tests collected": a broken suite, never a pass.
test: install
	@$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5); failing" >&2; exit 1; fi; \
	exit $$rc

lint: install
	$(BIN)/ruff check dedup attack tests bench
	$(BIN)/ruff format --check dedup attack tests bench

format: install
	$(BIN)/ruff format dedup attack tests bench
	$(BIN)/ruff check --fix dedup attack tests bench

# The whole main job, offline, on the bundled demo corpus.
demo: install
	$(BIN)/dedup demo demo-work

# Mutation run over the modules that guard data (bench/mutation.py: a fresh pytest process per mutant);
# not in CI: about an hour on 2 cores, resumable. bench/RESULTS.md records the share of mutants killed.
mutation: install
	$(BIN)/python -m bench.mutation

bench: install
	$(BIN)/python -m bench

# Copy detection with hard negatives (real photographs of one subject, derived and templated images),
# then the peers on the same folder (they are installed beside the project, never into it).
bench-quality: install
	$(BIN)/python -m bench.copydetect
	$(BIN)/python -m pip install --quiet --target bench/out/peers --no-deps imagededup cleanvision \
		perception pdqhash scikit-learn joblib threadpoolctl validators cloudpickle narwhals tabulate
	$(BIN)/python -m bench.peers

# Peak resident memory of `dedup import`: 100,000 small files, then a 2 GB parquet of 10-row row
# groups (one case per process, so each peak is its own).
bench-memory: install
	$(BIN)/python -m bench.memory folder
	$(BIN)/python -m bench.memory parquet

# Time against N (1k, 10k, 100k synthetic variants of real photos) for this project and the peers
# (install them as for bench-quality); each (method, N) capped at CAP seconds, results kept and resumed.
CAP ?= 900
bench-scaling: install
	$(BIN)/python -m bench.scaling --cap $(CAP)

# The GPU check (DEVELOPERS.md): one bounded run when a device is lent; one line and exit 0 without CUDA.
bench-device: install
	bash bench/device.sh

# One target per stage for data pipelines: make embed CONFIG=configs/laion-example.yaml
download embed cluster write attack report: install
	$(BIN)/dedup run $(CONFIG) --stages $@

run: install
	$(BIN)/dedup run $(CONFIG)

clean:
	rm -rf demo-work .pytest_cache .ruff_cache
