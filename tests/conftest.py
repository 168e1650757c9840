"""Shared fixtures: paths to the real data embedded in the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from e2e_fixtures import demo_run  # noqa: F401  (one real demo run per session, shared by slow tests)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
TEST_SLIDES = REPO / "tests" / "data" / "slides"

# No test may reach a model hub: everything loads from local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def torch_one_thread():
    """Tiny tensors: one intra-op torch thread is fastest and immune to oversubscribed CPUs."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def cmu_slide() -> Path:
    """Real H&E Aperio crop, 0.499 µm/px, one level."""
    return DATA / "slides" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def tcga_frozen_slide() -> Path:
    """Real TCGA frozen section, JPEG 2000 tiles, no MPP metadata."""
    return DATA / "slides" / "TCGA-CR-7395-01A-01-TS1.svs"


@pytest.fixture(scope="session")
def test_slides() -> Path:
    """Tiny real slide files and broken files for error paths."""
    return TEST_SLIDES


@pytest.fixture(scope="session")
def blca_table() -> Path:
    return DATA / "tcga" / "tcga_blca_all_clean.csv.zip"


@pytest.fixture(scope="session")
def ucec_table() -> Path:
    return DATA / "tcga" / "tcga_ucec_all_clean.csv.zip"


@pytest.fixture(scope="session")
def signatures() -> Path:
    return DATA / "tcga" / "signatures.csv"


@pytest.fixture(scope="session")
def published_splits() -> Path:
    return DATA / "tcga" / "splits"


@pytest.fixture(scope="session")
def demo_features_run(tmp_path_factory):
    """The demo cohort with real features (tests/demo_features.DemoRun), shared by the slow learning tests."""
    from demo_features import build_demo_features  # imports torch: only where a slow test asks for it

    return build_demo_features(tmp_path_factory.mktemp("demo_features"))
