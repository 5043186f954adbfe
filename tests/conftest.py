"""Shared fixtures. Tests run on real text, never on downloads: the corpus in ../shared/data beside the repository
(what CI has) or, in a bare clone, the excerpts of it in tests/fixtures/data (1.76 MB, the same file names and
layout; tests/fixtures/data/MANIFEST.md gives sources and licences).

A test that needs the whole corpus (all 64 Gutenberg novels, all 281 FineWeb-Edu documents, the full WikiText-2
and HellaSwag files) is marked `@pytest.mark.full_data("what it needs")`: skipped, with that reason, where only
the excerpts are present; run everywhere ../shared/data is."""
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FIXTURE_DATA = Path(__file__).resolve().parent / "fixtures" / "data"
FULL_DATA = (SHARED_DATA / "MANIFEST.md").is_file()
TEST_DATA = SHARED_DATA if FULL_DATA else FIXTURE_DATA
REQUIRE_FULL_DATA = "NANO_REQUIRE_FULL_DATA"  # .ci/run sets it: there, a missing ../shared/data is an error


def pytest_configure(config):
    if os.environ.get(REQUIRE_FULL_DATA) and not FULL_DATA:
        raise pytest.UsageError(f"{REQUIRE_FULL_DATA} is set but {SHARED_DATA} is absent: clone the repository "
                                "next to ../shared (or unset it to run on the excerpts in tests/fixtures/data)")
    config.addinivalue_line("markers", "full_data(what): needs the full corpus in ../shared/data, not only the "
                                       "excerpts in tests/fixtures/data; skipped where ../shared/data is absent")


def pytest_report_header(config):
    return f"test data: {TEST_DATA}" + ("" if FULL_DATA else " (excerpts: ../shared/data is absent; "
                                                                "full_data tests are skipped)")


def pytest_collection_modifyitems(config, items):
    if FULL_DATA:
        return
    for item in items:
        marker = item.get_closest_marker("full_data")
        if marker is not None:
            what = marker.args[0] if marker.args else "the full corpus"
            item.add_marker(pytest.mark.skip(reason=f"needs {what} from ../shared/data, which is absent (a bare "
                                                    f"clone has only the excerpts in tests/fixtures/data)"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or tests/fixtures/data in a bare clone (excerpts under the same names)."""
    if not (TEST_DATA / "MANIFEST.md").is_file():  # neither: a broken checkout, not a reason to skip
        pytest.fail(f"no test data: neither {SHARED_DATA} nor {FIXTURE_DATA} is there")
    return TEST_DATA


@pytest.fixture(scope="session", autouse=True)
def eval_data_default():
    """nano_core.eval reads WikiText-2 and HellaSwag from ../shared/data unless given a path: in a bare clone point
    that default at the excerpts, so the eval tests' in-process runs find their files."""
    if FULL_DATA:
        yield
        return
    from nano_core import eval as evaluation

    saved, evaluation.SHARED_DATA = evaluation.SHARED_DATA, FIXTURE_DATA
    yield
    evaluation.SHARED_DATA = saved
