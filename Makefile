# segscale: the README's two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DATA ?= data/demo
DEMO_WAREHOUSE ?= warehouse
DEMO_SNAPSHOT ?= 2024-12-31
DEMO_PREVIOUS ?= 2024-09-30
DEMO_CUSTOMERS ?= 20000

.PHONY: demo test test-fast lint docs bench wheel clean check-java

check-java:
	@java -version >/dev/null 2>&1 || { \
	  echo "segscale needs Java 17 or newer for Spark, and 'java' was not found on PATH."; \
	  echo "Install a JDK (Debian/Ubuntu: sudo apt-get install openjdk-17-jdk-headless; macOS: brew install openjdk@17)"; \
	  echo "or set JAVA_HOME and put \$$JAVA_HOME/bin on PATH, then run make again."; exit 1; }
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); \
	  if [ -n "$$v" ] && [ "$$v" -lt 17 ]; then \
	    echo "segscale needs Java 17 or newer; 'java' on PATH is version $$v. Install a JDK 17+ and retry."; exit 1; fi

# uv resolves and installs the same versions pip would, in half the time (docs/decisions.md). Then the Delta jars
# (docs/tables.md): the test sessions and an embedded session with delta.backend: delta-spark put them on the classpath.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "segscale needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) --version 2>&1)."; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet 'uv>=0.9,<1'
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -e '.[dev]'
	@# The Delta jars of the pinned pyspark/delta-spark pair, from Maven Central into ~/.cache/segscale/jars, once.
	$(VENV)/bin/segscale jars > /dev/null
	touch $(STAMP)

demo: check-java $(STAMP)
	$(VENV)/bin/segscale generate --customers $(DEMO_CUSTOMERS) --seed 7 --dirty-rate 0.005 --out $(DEMO_DATA)
	$(VENV)/bin/segscale run --input $(DEMO_DATA) --warehouse $(DEMO_WAREHOUSE) --snapshot-date $(DEMO_PREVIOUS)
	$(VENV)/bin/segscale treat --input $(DEMO_DATA) --warehouse $(DEMO_WAREHOUSE) --snapshot-date $(DEMO_PREVIOUS)
	$(VENV)/bin/segscale run --input $(DEMO_DATA) --warehouse $(DEMO_WAREHOUSE) --snapshot-date $(DEMO_SNAPSHOT)
	$(VENV)/bin/segscale history customer_scores --warehouse $(DEMO_WAREHOUSE)
	$(VENV)/bin/segscale report --warehouse $(DEMO_WAREHOUSE) --snapshot $(DEMO_SNAPSHOT) --out report.html

test: check-java $(STAMP)
	$(PY) -m pytest

# The unit tests alone (pure transforms, config, catalog, CLI parsing): about half a minute.
test-fast: check-java $(STAMP)
	$(PY) -m pytest tests/unit -n 0

lint: $(STAMP)
	$(VENV)/bin/ruff check src jobs tests benchmarks notebooks

# The data dictionary (docs/data-dictionary.md) is generated from the table catalog (src/segscale/catalog.py).
docs: $(STAMP)
	$(PY) -m segscale.catalog --update docs

# Not part of `make test`: the whole pipeline at 1M and 6M customers on each Delta backend, with DuckDB and plain
# PySpark on the same files, then the closed retention loop at 6M (a plan measured one quarter later); about two hours
# on 2 cores. Results: benchmarks/results/, docs/benchmarks.md. The component benchmarks (bench_foundation,
# bench_features, bench_churn, bench_clv) run alone: see docs/benchmarks.md.
bench: check-java $(STAMP)
	$(PY) benchmarks/bench_pipeline.py --sizes 1000000,6000000
	$(PY) benchmarks/bench_retention.py --sizes 6000000
	$(PY) benchmarks/bench_clv.py --sizes 6000000

wheel: $(STAMP)
	$(PY) -m pip wheel --no-deps --wheel-dir dist .

clean:
	rm -rf $(VENV) build dist data warehouse spark-warehouse mlruns mlartifacts mlflow.db report.html .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
