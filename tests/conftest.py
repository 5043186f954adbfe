"""Shared fixtures. Tests run on the real text in ../shared/data (beside the repository), never on downloads."""
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    # A missing data directory is a broken checkout, not a reason to skip: fail loudly.
    if not (SHARED_DATA / "MANIFEST.md").is_file():
        pytest.fail(f"shared data not found at {SHARED_DATA}; clone the repository next to ../shared")
    return SHARED_DATA
