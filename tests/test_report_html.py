"""The Snakemake HTML report of a finished demo run: what it embeds, and how it looks in headless Chromium.

Snakemake's report is a single-page app: every registered result is embedded as a data URI in the
``results`` object of a script, with its caption, category and labels; the page renders from
them with React. The tests read that object, then let Chromium render the page with the C-index
table and the Kaplan-Meier figure opened (as a click on them would) and keep the screenshots in
``test-artifacts/``. Chromium is the Debian package ``chromium``; without it the browser tests
skip, except on CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from pathlib import Path

import matplotlib.image as mpimg
import pytest
from e2e_fixtures import REPO, SNAKEMAKE, demo_run, run  # noqa: F401  (demo_run: one run per session)

pytestmark = pytest.mark.slow

ARTIFACTS = REPO / "test-artifacts"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=10000",  # let React render and the view switch run before the capture
]
#: report entry -> (file name, how the app shows it, label in the navigation table)
EXPECTED = {
    "cindex": ("cindex.html", "html", "C-index per fold (table)"),
    "km": ("km.png", "img", "Kaplan-Meier by predicted risk"),
}
REGISTERED = {
    "cindex.html": "Survival",
    "comparison.html": "Survival",
    "predictions.csv": "Survival",
    "km.png": "Survival",
    "cindex_strip.png": "Survival",
    "reconstruction.html": "Genomic reconstruction",
    "reconstruction.png": "Genomic reconstruction",
    "paper_table.html": "Survival",
    "attention_heatmaps.png": "Interpretability",
    "training_curves.png": "Training",
    "failed_slides.html": "Slides",
    "qc_contact_sheet.png": "Slides",
}
#: appended to a copy of the report: open one result the way a click in the navigation does
OPEN_RESULT_JS = """<script>
window.addEventListener("load", function () {
  setTimeout(function () {
    const path = Object.keys(results).find((p) => p.endsWith("/%(name)s"));
    const category = Object.keys(categories).find((c) => Object.values(categories[c]).some((l) => l.includes(path)));
    const subcategory = Object.keys(categories[category]).find((s) => categories[category][s].includes(path));
    app.setView({navbarMode: "subcategory", category: category, subcategory: subcategory,
                 content: "%(content)s", contentPath: results[path].data_uri, resultPath: path});
  }, 0);
});
</script>
"""


def chromium() -> str:
    """The Chromium executable; skip (or fail on CI) when it is not installed."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed on CI; .ci/run must run: apt-get install -y chromium")
        pytest.skip("headless Chromium is not installed (Debian: apt-get install -y chromium)")
    return path


def embedded(page: str, name: str):
    """The JSON value of ``var <name> = ...`` in the report page."""
    match = re.search(rf'var {name} = (?=[{{\["])', page)  # the data, not a same-named JS variable
    assert match, f"report.html has no 'var {name}'"
    return json.JSONDecoder().raw_decode(page, match.end())[0]


def data_bytes(entry: dict) -> bytes:
    """The file a report entry embeds (base64 data URI)."""
    header, _, payload = entry["data_uri"].partition(",")
    assert header.endswith(";base64"), header
    return base64.b64decode(payload)


@pytest.fixture(scope="module")
def html_report(demo_run) -> Path:  # noqa: F811
    result = run([SNAKEMAKE, "--report", "results/report.html"], demo_run)
    assert result.returncode == 0, result.stderr[-3000:]
    return demo_run / "results" / "report.html"


@pytest.fixture(scope="module")
def entries(html_report) -> dict[str, dict]:
    """Report entries by file name."""
    results = embedded(html_report.read_text(encoding="utf-8"), "results")
    return {entry["filename"]: entry for entry in results.values()}


def test_every_result_is_registered_with_a_caption_a_category_and_a_label(html_report, entries):
    page = html_report.read_text(encoding="utf-8")
    assert set(REGISTERED) <= set(entries), sorted(entries)
    categories = embedded(page, "categories")
    for name, category in REGISTERED.items():
        entry = entries[name]
        assert len(entry["caption"]) > 200, f"{name}: caption missing or too short"
        assert list(entry["labels"]) == ["result"], f"{name}: one label key everywhere (no stray toggles)"
        paths = [p for sub in categories[category].values() for p in sub]
        assert any(p.endswith(f"/{name}") for p in paths), f"{name} is not in category {category}"
    assert "G-HANet" in embedded(page, "workflow_desc"), "workflow description missing (Snakefile `report:`)"


def test_the_cindex_table_and_the_km_figure_are_embedded(entries):
    table = data_bytes(entries["cindex.html"]).decode("utf-8")
    assert "<th>Harrell C" in table and "<td>mean ± std" in table and "<td>pooled out-of-fold" in table
    assert len(re.findall(r"<tr><td>\d ", table)) == 20  # 5 folds of each of the demo's 4 models
    km = data_bytes(entries["km.png"])
    assert km[:8] == PNG_MAGIC
    height, width = mpimg.imread(io.BytesIO(km)).shape[:2]
    assert width > 300 and height > 300


@pytest.mark.parametrize("view", sorted(EXPECTED))
def test_the_report_renders_in_headless_chromium(html_report, tmp_path, view):
    browser = chromium()
    name, content, label = EXPECTED[view]
    page = html_report.read_text(encoding="utf-8")
    end = page.rfind("</body>")
    opened = tmp_path / f"report_{view}.html"
    opened.write_text(page[:end] + OPEN_RESULT_JS % {"name": name, "content": content} + page[end:], encoding="utf-8")
    flags = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = run([*flags, "--dump-dom", opened.as_uri()], tmp_path, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    app = dom.stdout[dom.stdout.find('id="app"') :]
    assert label in app and "Survival" in app, "the navigation did not render the Survival results"
    tag = {"html": "iframe", "img": "img"}[content]
    assert re.search(rf'<{tag} src="data:[^"]*filename={re.escape(name)};base64,', app), f"{name} not in an <{tag}>"
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / f"report_{view}.png"
    shot = run(
        [*flags, f"--screenshot={screenshot}", "--window-size=1400,1800", opened.as_uri()], tmp_path, timeout=180
    )
    assert shot.returncode == 0 and screenshot.read_bytes()[:8] == PNG_MAGIC, shot.stderr[-2000:]
    pixels = mpimg.imread(screenshot)
    assert pixels.shape[:2] == (1800, 1400) and pixels.std() > 0.05, "the screenshot is blank"


def test_changing_a_table_option_reruns_only_the_report(demo_run, tmp_path):  # noqa: F811
    overlay = tmp_path / "decimals.yaml"
    overlay.write_text("report:\n  decimals: 2\n")
    dry = run([SNAKEMAKE, "-n", "--configfile", "config/config.yaml", str(overlay)], demo_run)
    assert dry.returncode == 0, dry.stderr[-3000:]
    stats = re.search(r"Job stats:\njob\s+count\n-+\s+-+\n(.*?)\ntotal", dry.stdout + dry.stderr, re.S)
    assert stats, dry.stdout[-3000:]
    jobs = {line.split()[0] for line in stats.group(1).splitlines() if line.strip()}
    shown = {"report_cindex", "report_comparison", "report_reconstruction", "paper_table"}  # the products with decimals in them
    assert jobs - {"all"} == shown, f"changing report.decimals would rerun {sorted(jobs)}"  # all: the target
