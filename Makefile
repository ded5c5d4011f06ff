# Shortcuts; README.md shows the underlying commands.
.PHONY: setup run test golden bench bench-proxy bench-scale bench-quick docs

setup:
	./scripts/setup

run: setup
	.venv/bin/meshgate run examples/quickstart/

test: setup
	.venv/bin/pytest

# Regenerate golden files after a deliberate change; review `git diff tests/golden` like code.
golden: setup
	.venv/bin/pytest tests/test_translate_golden.py --update-golden

docs: setup
	.venv/bin/python scripts/gen_config_reference.py > docs/config-reference.md

-include bench/Makefile.inc
