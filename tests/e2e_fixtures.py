"""One real run of the demo workflow per test session, shared by every end-to-end test.

Register the fixture once for the whole session in ``tests/conftest.py``::

    from e2e_fixtures import demo_run  # noqa: F401

The run is also cached in this module, so a test module that imports the fixture itself still
reuses the session's run instead of starting a second one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
#: the README's run command, on the 2 cores of the CI machine
DEMO_COMMAND = [SNAKEMAKE, "--cores", "2"]
#: wall-clock limit of the demo run (the full demo takes about 10 minutes on 2 cores)
DEMO_TIMEOUT_S = 1800

_RUNS: dict[str, tuple[Path, subprocess.CompletedProcess]] = {}


def run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd`` with the test interpreter's bin folder first on PATH and no model hub."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def copy_repo(dest: Path) -> Path:
    """A clean copy of the workflow (no results, no venv, no git) to run in isolation."""
    ignore = shutil.ignore_patterns(
        ".venv", "results", "logs", ".snakemake", ".git", "__pycache__", "*.egg-info", "bench", "test-artifacts"
    )
    shutil.copytree(REPO, dest, ignore=ignore)
    return dest


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """Work folder of a finished ``snakemake --cores 2`` demo run (workflow profile profiles/default) (once per session)."""
    if "demo" not in _RUNS:
        work = copy_repo(tmp_path_factory.mktemp("demo_run") / "wf")
        _RUNS["demo"] = (work, run(DEMO_COMMAND, work, timeout=DEMO_TIMEOUT_S))
    work, result = _RUNS["demo"]
    assert result.returncode == 0, f"the demo run failed in {work}:\n{result.stderr[-5000:]}"
    return work
