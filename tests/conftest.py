"""Shared pytest setup. `--update-golden` rewrites golden files instead of comparing."""

from __future__ import annotations


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", help="rewrite golden output files")
