# Convenience targets; scripts/ holds the real commands.
.PHONY: setup test lint format demo bench pictures
setup:
	bash scripts/setup-env.sh test
test:
	bash scripts/test.sh
lint:
	.venv/bin/python -m ruff check vdigui tests bench
	.venv/bin/python -m ruff format --check vdigui tests bench
	.venv/bin/python -m mypy
format:
	.venv/bin/python -m ruff format vdigui tests bench
demo:
	bash scripts/run-demo.sh
pictures:
	bash scripts/render-pictures.sh
# Whole-process benches time with hyperfine (Debian package); installed here when missing.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
bench:
	command -v hyperfine >/dev/null 2>&1 || $(SUDO) apt-get install -y hyperfine \
		|| { $(SUDO) apt-get update && $(SUDO) apt-get install -y hyperfine; }
	.venv/bin/python bench/bench_copy.py
	.venv/bin/python bench/bench_engine.py --only big
	.venv/bin/python bench/bench_fs.py
	.venv/bin/python bench/bench_diff.py
	.venv/bin/python bench/bench_files.py
	QT_QPA_PLATFORM=offscreen .venv/bin/python bench/bench_gui.py
	.venv/bin/python bench/bench_merge.py
	.venv/bin/python bench/bench_resize.py
