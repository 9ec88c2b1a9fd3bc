# Convenience targets; scripts/ holds the real commands.
.PHONY: setup test lint demo bench
setup:
	bash scripts/setup-env.sh test
test:
	bash scripts/test.sh
lint:
	.venv/bin/python -m ruff check vdigui tests bench
demo:
	bash scripts/run-demo.sh
bench:
	.venv/bin/python bench/bench_engine.py
	.venv/bin/python bench/bench_ops.py
	.venv/bin/python bench/bench_merge.py
