# Two commands from a fresh clone:  make demo  (set up + run the quickstart)   make test  (run the tests)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint fashion clean

$(BIN)/edgecnn: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch 2.14.1 + torchvision 0.29.1 are the versions edgecnn is tested with.
	$(BIN)/pip install -e '.[train,dev]' 'torch==2.14.1' 'torchvision==0.29.1'
	touch $@

demo: $(BIN)/edgecnn
	$(BIN)/edgecnn run recipes/quickstart.yaml

test: $(BIN)/edgecnn
	$(BIN)/pytest -q

lint: $(BIN)/edgecnn
	$(BIN)/ruff check toolkit tests

fashion: $(BIN)/edgecnn
	$(BIN)/edgecnn run recipes/fashion_mnist.yaml

clean:
	rm -rf runs .pytest_cache
