# Two entry points (see README): `make bench` and `make test`. Both create .venv, install the
# dependencies and build the extension first (offline-capable: pyproject.toml + --no-build-isolation).
# PYTHON picks the interpreter that creates the venv. Extras: `make kernel-report` (static sm_90 figures of
# every kernel, no GPU needed), `make gpu-check-dry` (scripts/gpu_check.sh --cpu-dry-run).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
export MAX_JOBS ?= 2

.PHONY: setup build test bench kernel-report gpu-check-dry clean

$(VENV)/.deps: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -r requirements.txt
	touch $@

setup: $(VENV)/.deps
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -c "import transxnet_ops as t; print('transxnet_ops backends: cpu', t.available_backends('cpu'), '| cuda', t.available_backends('cuda'))"

build: setup

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) benchmarks/bench_idconv.py --quick
	$(PY) benchmarks/bench_osra.py --quick
	$(PY) benchmarks/bench_model.py --quick

kernel-report: setup
	$(PY) benchmarks/kernel_report.py

gpu-check-dry: setup
	PYTHON=$(PY) scripts/gpu_check.sh --cpu-dry-run build/gpu_check_dry 400

clean:
	rm -rf build *.egg-info transxnet_ops/_C*.so
