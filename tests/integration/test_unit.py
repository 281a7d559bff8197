"""Runs every cmocka unit-test binary (tests/unit/test_*.c) as one pytest
case each, so `make test` reports unit and integration tests in one summary.
A unit test whose binary was not built fails here rather than vanishing."""
import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BUILD = pathlib.Path(os.environ.get("PRISM_BUILD", REPO / "build"))
UNITS = sorted(p.stem for p in (REPO / "tests" / "unit").glob("test_*.c"))


@pytest.mark.parametrize("name", UNITS)
def test_unit(name):
    binary = BUILD / "tests" / name
    assert binary.exists(), f"{binary} not built (run make)"
    r = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{name} failed:\n{r.stdout}\n{r.stderr}"
