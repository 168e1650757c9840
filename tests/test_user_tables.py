"""A user's tables and config, read when Snakemake builds the DAG (ghanet_workflow.slide_table).

Every malformed table is built from the real demo data (data/demo/tcga_blca_demo.csv,
config/demo_slides.tsv) and run through ``snakemake -n`` in the repository: the run stops with
the workflow's own one-line message naming the file and the line/column/config key, never a
Python traceback. Also: a user config is not merged over the demo's config, identifiers stay as
written, and a new slide whose file is missing does not stop ``snakemake predict``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ghanet_workflow.errors import InputError
from ghanet_workflow import slide_table
from test_workflow import PREDICT, fake_trained_cohort, job_counts

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
DEMO_CONFIG = REPO / "config" / "config.yaml"
DEMO_TABLE = REPO / "data" / "demo" / "tcga_blca_demo.csv"
DEMO_SLIDES = REPO / "config" / "demo_slides.tsv"
CMU_SLIDE = REPO / "data" / "slides" / "CMU-1-Small-Region.svs"
#: scenarios of config/test/ (tests/test_scenarios.py): a new user's config, one new slide to predict
MINIMAL_CONFIG = REPO / "config" / "test" / "minimal" / "config.yaml"
PREDICT_TABLE = REPO / "config" / "test" / "predict" / "new_slides.csv"


def run(cmd: list[str], cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def dry_run(*configfiles: Path | str, target: str | None = None, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "-n", "--quiet", "rules", *extra]
    if configfiles:
        cmd += ["--configfile", *map(str, configfiles)]
    return run(cmd + ([target] if target else []))


def demo_config() -> dict:
    return yaml.safe_load(DEMO_CONFIG.read_text())


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def demo_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def replace_cell(line: str, sep: str, column: int, value: str) -> str:
    cells = line.split(sep)
    cells[column] = value
    return sep.join(cells)


# ----------------------------------------------------------------------------- malformed inputs
# Each builder writes its files into tmp and returns the config overlay stacked over the demo's.


def clinical_overlay(tmp: Path, text: str, name: str = "clinical.csv") -> dict:
    path = tmp / name
    path.write_text(text)
    return {"clinical": str(path)}


def clinical_edit(edit):
    def build(tmp: Path) -> dict:
        return clinical_overlay(tmp, "\n".join(edit(demo_lines(DEMO_TABLE))) + "\n")

    return build


def slides_overlay(tmp: Path, text: str, name: str = "slides.tsv") -> dict:
    path = tmp / name
    path.write_text(text)
    return {"slides": {"dir": "data/slides", "table": str(path)}}


def slides_edit(edit):
    def build(tmp: Path) -> dict:
        return slides_overlay(tmp, "\n".join(edit(demo_lines(DEMO_SLIDES))) + "\n")

    return build


def broken_mpp(value: str):
    """The slide table with ``value`` in the mpp cell of broken.svs (line 44)."""

    def edit(lines: list[str]) -> list[str]:
        assert lines[43].startswith("broken.svs\t")
        return [*lines[:43], replace_cell(lines[43], "\t", 2, value)]

    return edit


def drop_column(name: str):
    def edit(lines: list[str]) -> list[str]:
        index = lines[0].split(",").index(name)
        return [",".join(c for i, c in enumerate(line.split(",")) if i != index) for line in lines]

    return edit


def predict_overlay(tmp: Path, text: str) -> dict:
    path = tmp / "new_slides.csv"
    path.write_text(text)
    return {"predict": {"slides": str(path)}}


CASES = {
    "clinical file missing": (
        lambda tmp: {"clinical": str(tmp / "absent.csv")},
        ["absent.csv", "config key clinical", "not found"],
    ),
    "clinical without slide_id": (
        clinical_edit(drop_column("slide_id")),
        ["clinical.csv", "missing required column(s) ['slide_id']"],
    ),
    "clinical without case_id": (
        clinical_edit(drop_column("case_id")),
        ["clinical.csv", "missing required column(s) ['case_id']"],
    ),
    "clinical semicolon-separated": (
        clinical_edit(lambda lines: [line.replace(",", ";") for line in lines]),
        ["clinical.csv", "config key clinical", "semicolon-separated", "comma-separated"],
    ),
    "clinical tab-separated": (
        clinical_edit(lambda lines: [line.replace(",", "\t") for line in lines]),
        ["clinical.csv", "config key clinical", "tab-separated"],
    ),
    "clinical empty file": (
        lambda tmp: clinical_overlay(tmp, ""),
        ["clinical.csv", "config key clinical", "is empty"],
    ),
    "clinical header only": (
        clinical_edit(lambda lines: lines[:1]),
        ["clinical.csv", "config key clinical", "no data row"],
    ),
    "clinical empty case_id": (
        clinical_edit(lambda lines: [*lines[:2], replace_cell(lines[2], ",", 1, ""), *lines[3:]]),
        ["clinical.csv", "column case_id is empty on line(s) 3"],
    ),
    "clinical duplicated slide": (
        clinical_edit(lambda lines: [*lines, lines[1]]),
        ["clinical.csv", "duplicated slide_id", "line 2 (slide_id demo-TCGA-2F-A9KP.tiff)", "line 45"],
    ),
    "clinical slide_id is a path": (
        clinical_edit(lambda lines: [lines[0], replace_cell(lines[1], ",", 2, "sub/x.svs"), *lines[2:]]),
        ["clinical.csv", "slide_id holds a path", "line 2 (slide_id sub/x.svs)", "slides.dir"],
    ),
    "slide table missing": (
        lambda tmp: {"slides": {"dir": "data/slides", "table": str(tmp / "absent.tsv")}},
        ["absent.tsv", "config key slides.table", "not found"],
    ),
    "slide table mpp not a number": (
        slides_edit(broken_mpp("abc")),
        ["slides.tsv", "config key slides.table", "line 44 (slide_id broken.svs)", "column mpp = 'abc'", "> 0"],
    ),
    "slide table mpp zero": (
        slides_edit(broken_mpp("0")),
        ["slides.tsv", "line 44 (slide_id broken.svs)", "column mpp = 0.0", "> 0"],
    ),
    "slide table mpp negative": (
        slides_edit(broken_mpp("-0.25")),
        ["slides.tsv", "line 44 (slide_id broken.svs)", "column mpp = -0.25"],
    ),
    "slide table mpp nan": (
        slides_edit(broken_mpp("nan")),
        ["slides.tsv", "line 44 (slide_id broken.svs)", "column mpp = 'nan'"],
    ),
    "slide table slide_id is a path": (
        slides_edit(lambda lines: [*lines[:43], replace_cell(lines[43], "\t", 0, "data/slides/broken.svs")]),
        ["slides.tsv", "line 44 (slide_id data/slides/broken.svs)", "column slide_id", "not a path"],
    ),
    "slide table duplicated slide": (
        slides_edit(lambda lines: [*lines, lines[43]]),
        ["slides.tsv", "duplicated slide_id", "line 44 (slide_id broken.svs)", "line 45 (slide_id broken.svs)"],
    ),
    "slide table unknown slide": (
        slides_edit(lambda lines: [*lines, "nothere.svs\tdata/slides/nothere.svs\t"]),
        ["slides.tsv", "not in the clinical table", "line 45 (slide_id nothere.svs)"],
    ),
    "slide table misspelt column": (
        slides_edit(lambda lines: ["slide_id\tpath\tMPP", *lines[1:]]),
        ["slides.tsv", "unknown column(s) ['MPP']", "slide_id", "mpp"],
    ),
    "slide table without slide_id": (
        slides_edit(lambda lines: ["slide\tpath\tmpp", *lines[1:]]),
        ["slides.tsv", "no slide_id column"],
    ),
    "slide table ragged row": (
        slides_edit(lambda lines: [*lines[:5], lines[5] + "\textra\tcells", *lines[6:]]),
        ["slides.tsv", "cannot be read as a tab-separated table", "line 6"],
    ),
    "slide table empty": (
        lambda tmp: slides_overlay(tmp, ""),
        ["slides.tsv", "config key slides.table", "is empty"],
    ),
    "slide table header only": (
        slides_edit(lambda lines: lines[:1]),
        ["slides.tsv", "config key slides.table", "no data row"],
    ),
    "every slide missing (slides.dir)": (
        lambda tmp: {"slides": {"dir": str(tmp / "no_slides"), "table": None}},
        ["none of the 43 slide(s)", "tcga_blca_demo.csv", "config key slides.dir", "no_slides"],
    ),
    "every slide missing (slides.table)": (
        slides_edit(
            lambda lines: [lines[0]]
            + [re.sub(r"\t(results/demo_slides|data/slides)/", "\telsewhere/", line) for line in lines[1:]]
        ),
        ["none of the 43 slide(s)", "slides.table", "slides.tsv", "elsewhere/"],
    ),
    "predict table mpp not a number": (
        lambda tmp: predict_overlay(tmp, f"case_id,slide_id,path,mpp\nNEW-1,CMU.svs,{CMU_SLIDE},fast\n"),
        ["new_slides.csv", "config key predict.slides", "line 2 (slide_id CMU.svs)", "column mpp = 'fast'"],
    ),
    "predict table without path": (
        lambda tmp: predict_overlay(tmp, "case_id,slide_id\nNEW-1,CMU.svs\n"),
        ["new_slides.csv", "every row needs a path", "line 2 (slide_id CMU.svs)"],
    ),
    "predict table slide_id is a path": (
        lambda tmp: predict_overlay(tmp, f"case_id,slide_id,path\nNEW-1,a/CMU.svs,{CMU_SLIDE}\n"),
        ["new_slides.csv", "line 2 (slide_id a/CMU.svs)", "column slide_id"],
    ),
    "predict table empty case_id": (
        lambda tmp: predict_overlay(tmp, f"case_id,slide_id,path\n,CMU.svs,{CMU_SLIDE}\n"),
        ["new_slides.csv", "column case_id is empty on line(s) 2"],
    ),
    "every predict slide missing": (
        lambda tmp: predict_overlay(tmp, "case_id,slide_id,path\nNEW-1,X.svs,/nowhere/X.svs\n"),
        ["new_slides.csv", "config key predict.slides", "none of the 1 slide file(s)", "/nowhere/X.svs"],
    ),
}


def assert_clean_error(result: subprocess.CompletedProcess, expected: list[str]) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    for fragment in expected:
        assert fragment in output, f"{fragment!r} not in:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    assert not re.search(r'^\s*File "', output, re.M), f"a stack in the output:\n{output[-3000:]}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_malformed_table_stops_the_dag_with_a_named_message(case, tmp_path):
    build, expected = CASES[case]
    overlay = write_yaml(tmp_path / "overlay.yaml", build(tmp_path))
    assert_clean_error(dry_run(DEMO_CONFIG, overlay), expected)


def test_a_user_config_without_clinical_is_told_the_key(tmp_path):
    config = demo_config()
    del config["clinical"]
    user = write_yaml(tmp_path / "my_cohort.yaml", config)
    assert_clean_error(dry_run(user), ["config key clinical is required", "my_cohort.yaml", "config/README.md"])


def test_a_user_config_without_slides_dir_or_table_is_told_the_key(tmp_path):
    config = demo_config()
    config["slides"] = {"table": None}
    user = write_yaml(tmp_path / "my_cohort.yaml", config)
    assert_clean_error(dry_run(user), ["config key slides.dir is empty", "training.models is ['ghanet', 'abmil',", "my_cohort.yaml"])


def test_a_bad_config_value_is_one_named_line(tmp_path):
    overlay = write_yaml(tmp_path / "overlay.yaml", {"splits": {"k": 1}, "tiling": {"patch_sise": 224}})
    result = dry_run(DEMO_CONFIG, overlay)
    assert_clean_error(result, ["overlay.yaml"])
    assert "tiling.patch_sise" in result.stderr + result.stdout or "splits.k = 1" in result.stderr + result.stdout


# ----------------------------------------------------------------------------- config defaults


def test_a_user_config_does_not_inherit_the_demo_slide_table(tmp_path):
    """Without slides.table the slides are <slides.dir>/<slide_id>: no demo slide is generated."""
    config = demo_config()
    del config["slides"]["table"]
    user = write_yaml(tmp_path / "my_cohort.yaml", config)
    too_few = run([SNAKEMAKE, "-n", "--forceall", "--quiet", "rules", "--configfile", str(user)])
    assert too_few.returncode != 0 and "Traceback" not in too_few.stdout + too_few.stderr
    assert "37 of 40 patients have no slide on disk; 3 remain" in too_few.stdout + too_few.stderr
    assert "only 3 patient(s) of data/demo/tcga_blca_demo.csv have a slide on disk" in too_few.stdout + too_few.stderr
    config["splits"]["k"] = 2  # 3 patients with a slide on disk: 2 folds can be made
    user = write_yaml(tmp_path / "my_cohort.yaml", config)
    result = run([SNAKEMAKE, "-n", "--forceall", "--quiet", "rules", "--configfile", str(user)])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    jobs = job_counts(result.stdout)
    assert "demo_slide" not in jobs, jobs  # the demo's table (results/demo_slides/...) was not read
    assert jobs["tile_slide"] == 3, jobs  # the 3 files of data/slides named in the clinical table
    assert "40 slide(s) of the clinical table are not on disk" in output
    assert "data/slides/demo-TCGA-2F-A9KP.tiff" in output or "data/slides/demo-" in output
    with_demo = job_counts(run([SNAKEMAKE, "-n", "--forceall", "--quiet", "rules"]).stdout)
    assert with_demo["demo_slide"] == 40 and with_demo["tile_slide"] == 43  # no --configfile: the demo's config


def test_a_minimal_user_config_takes_the_documented_defaults():
    from snakemake.utils import validate

    config = {"cohort": "mine", "clinical": "table.csv"}
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"), set_default=True)
    assert config["slides"] == {"dir": None, "table": None}
    assert config["signatures"] == "data/tcga/signatures.csv"
    assert config["features"]["num_workers"] == 2  # the schema's default (the demo sets 0)
    assert config["evaluation"]["bootstrap"] == 1000  # (the demo sets 200)
    assert config["training"]["models"] == ["ghanet"] and config["features"]["encoder"] == "efficientnet_lite0"
    assert config["tiling"]["preset"] == "resection"  # (the demo sets biopsy)
    readme = (REPO / "config" / "README.md").read_text()
    assert "| `evaluation.bootstrap` | `1000` |" in readme and "| `tiling.preset` | `resection` |" in readme

    # config/test/minimal: 3 patients of the demo table have a slide in data/slides: 3 folds, not the default 5
    result = run([SNAKEMAKE, "-n", "--forceall", "--quiet", "rules", "--configfile", str(MINIMAL_CONFIG)])
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert job_counts(result.stdout)["tile_slide"] == 3


# ----------------------------------------------------------------------------- slide_table directly


def test_identifiers_stay_as_written(tmp_path):
    clinical = tmp_path / "clinical.csv"
    clinical.write_text(
        "case_id,slide_id,survival_months,censorship\n"
        "0001,0001.svs,10,0\n"
        "1e5,007,12,1\n"
        "NA,TRUE,3,0\n"
        " 01 ,NA.tiff,4,1\n"
    )
    slides_dir = tmp_path / "slides"
    slides_dir.mkdir()
    (slides_dir / "0001.svs").write_bytes(b"")
    table = tmp_path / "slides.tsv"
    table.write_text("slide_id\tmpp\n007\t0.25\n")
    slides = slide_table.load_slide_table(clinical, slides_dir=slides_dir, table=table)
    assert slides["case_id"].tolist() == ["0001", "1e5", "NA", "01"]
    assert slides["slide_id"].tolist() == ["0001.svs", "007", "TRUE", "NA.tiff"]
    assert slides.index.tolist() == ["0001", "007", "TRUE", "NA"]
    assert slides.loc["007", "mpp"] == 0.25 and pd.isna(slides.loc["0001", "mpp"])
    assert slides["exists"].tolist() == [True, False, False, False]
    assert slides.loc["0001", "path"] == str(slides_dir / "0001.svs")

    new = tmp_path / "new.csv"
    new.write_text("case_id,slide_id,path\n0002,00.svs,/nowhere/00.svs\n")
    predict = slide_table.load_predict_slides(new)
    assert predict["case_id"].tolist() == ["0002"] and predict.index.tolist() == ["00"]
    assert not predict["exists"].any()


def test_the_predict_cli_reads_the_same_table(tmp_path):
    from ghanet_workflow.predict import read_slide_table  # (imports torch: kept inside this test)

    table = tmp_path / "new.tsv"
    table.write_text("case_id\tslide_id\tpath\tmpp\n0002\tA.svs\t/a.svs\t\n")
    read = read_slide_table(table)
    assert read.to_dict("records") == [{"case_id": "0002", "slide_id": "A.svs", "path": "/a.svs", "mpp": ""}]
    table.write_text("case_id\tslide_id\tmpp\n0002\tA.svs\t-1\n")
    with pytest.raises(InputError, match=r"line 2 \(slide_id A\.svs\): column mpp = -1\.0"):
        read_slide_table(table)


def test_the_parse_imports_no_heavy_module():
    code = (
        "import sys, ghanet_workflow.slide_table\n"
        "heavy = {'torch', 'sklearn', 'sksurv', 'matplotlib', 'h5py', 'openslide'} & set(sys.modules)\n"
        "assert not heavy, heavy"
    )
    result = run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- predict with a missing slide


def test_predict_dry_run_skips_a_missing_slide_and_scores_the_others(tmp_path):
    trained = fake_trained_cohort(tmp_path / "trained")
    table = tmp_path / "new_slides.csv"  # config/test/predict's table and a slide whose file is missing
    table.write_text(PREDICT_TABLE.read_text() + "NEW-2,NEW-2.svs,/nowhere/NEW-2.svs\n")
    setting = f"predict={{slides: {table}, models_from: {trained}}}"
    result = run([SNAKEMAKE, "-n", "predict", "--quiet", "rules", "--config", setting])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    jobs = job_counts(result.stdout)
    assert jobs["predict_tile_slide"] == 1 and jobs["predict_extract_features"] == 1 and jobs["predict_risks"] == 1
    assert "1 new slide(s) of predict.slides" in output and "/nowhere/NEW-2.svs" in output
    detail = run([SNAKEMAKE, "-n", "predict", "--config", setting])
    assert "predict/tiles/CMU-1-Small-Region.h5" in detail.stdout
    assert "predict/tiles/NEW-2.h5" not in detail.stdout


@pytest.fixture(scope="module")
def trained_models(tmp_path_factory):
    """One tiny trained G-HANet fold model (the training cohort of tests/test_predict.py)."""
    import test_predict

    results = tmp_path_factory.mktemp("missing") / "results" / "toy"
    import numpy as np

    from ghanet_workflow.fold import run_fold

    case_ids = test_predict.write_training_cohort(results, np.random.default_rng(0))
    for fold in range(1):
        test_predict.write_fold_csv(results / "splits" / f"fold_{fold}.csv", case_ids, fold)
        run_fold(
            results / "cohort",
            results / "splits" / f"fold_{fold}.csv",
            "ghanet",
            results / "models" / "ghanet" / f"fold_{fold}",
            test_predict.OPTIONS,
        )
    return results


@pytest.mark.usefixtures("torch_one_thread")
def test_predict_gives_a_patient_whose_slide_file_is_missing_a_row_with_the_reason(trained_models, tmp_path):
    import numpy as np
    import test_predict

    from ghanet_workflow.predict import predict_slides, read_slide_table

    features = tmp_path / "features"
    rng = np.random.default_rng(2)
    for slide_id in ("A.svs", "B1.svs"):
        test_predict.write_features(features / f"{Path(slide_id).stem}.h5", rng.normal(size=(6, test_predict.IN_DIM)))
    present = tmp_path / "B1.svs"
    present.write_bytes(b"")
    table = tmp_path / "new.csv"
    table.write_text(
        "case_id,slide_id,path\n"
        f"A,A.svs,{tmp_path / 'A.svs'}\n"  # file gone, features extracted earlier: scored
        f"B,B1.svs,{present}\n"
        f"B,B2.svs,{tmp_path / 'B2.svs'}\n"  # missing: B is scored from B1 alone
        f"C,C.svs,{tmp_path / 'C.svs'}\n"  # missing: C keeps a row with the reason
    )
    risks = predict_slides(read_slide_table(table), slide_table.fold_model_dirs(trained_models, "ghanet"), features)
    risks = risks.set_index("case_id")
    assert risks.index.tolist() == ["A", "B", "C"]
    assert (risks.loc[["A", "B"], "status"] == "ok").all() and risks.loc[["A", "B"], "risk_mean"].notna().all()
    assert risks.loc["B", "n_slides"] == 2 and risks.loc["B", "n_slides_used"] == 1
    assert risks.loc["C", "status"] == "no_usable_slide" and np.isnan(risks.loc["C", "risk_mean"])
    assert risks.loc["C", "reason"] == f"C.svs: missing: {tmp_path / 'C.svs'} not found"


def test_predict_without_a_table_or_models_is_one_named_line(tmp_path):
    assert_clean_error(run([SNAKEMAKE, "-n", "predict"]), ["config key predict.slides is empty"])
    setting = f"predict={{models_from: {tmp_path / 'untrained'}}}"  # config/test/predict, no trained model
    result = run([SNAKEMAKE, "-n", "predict", "--configfile", str(DEMO_CONFIG), PREDICT, "--config", setting])
    assert_clean_error(result, ["no trained fold model", "untrained/models/ghanet/fold_<k>/model.pt", "predict.models_from"])


def test_missing_encoder_weights_are_named_before_any_slide_is_tiled(tmp_path):
    overlay = write_yaml(tmp_path / "weights.yaml", {"features": {"weights": str(tmp_path / "resnet50.pth")}})
    result = dry_run(DEMO_CONFIG, overlay)
    assert_clean_error(result, ["features.weights", "resnet50.pth", "no such file"])


def test_a_number_given_in_a_nested_config_points_to_an_overlay_file():
    result = run([SNAKEMAKE, "-n", "--config", "evaluation={bootstrap: 50}"])
    assert result.returncode != 0 and "Traceback" not in result.stdout + result.stderr
    assert "reaches Snakemake as text: put the setting in a YAML file" in result.stdout + result.stderr
