"""Helpers shared by test modules (not a test module: pytest collects nothing here). Fixtures live in conftest.py;
plain functions and constants that several test modules use live here, so that no test module imports another."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


def load_benchmark(name: str):
    """A script of benchmarks/ imported as a module (its functions and constants, without running it). The scripts
    import their shared harness as `harness`, as they do when run as `python benchmarks/NAME.py`."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
