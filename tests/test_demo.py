"""The embedded demo cohort: its table, its slide list and the synthetic slide generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pytest

from ghanet_workflow.demo import (
    DEFAULT_SOURCES,
    DEFAULTS,
    generate_demo_slide,
    genomic_scores,
    load_clinical_table,
    main,
    open_sources,
    plan_slide,
    resolve_options,
    risk_percentiles,
    tissue_mask,
)
from ghanet_workflow.cohort import gene_groups, read_signatures
from ghanet_workflow.errors import InputError

MCAT_COLUMNS = ["case_id", "slide_id", "site", "is_female", "oncotree_code", "age", "survival_months", "censorship"]
REAL_SLIDES = {"CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs", "broken.svs"}


@pytest.fixture(scope="module")
def demo_csv(repo: Path) -> Path:
    return repo / "data" / "demo" / "tcga_blca_demo.csv"


@pytest.fixture(scope="module")
def demo_table(demo_csv: Path) -> pd.DataFrame:
    return pd.read_csv(demo_csv)


@pytest.fixture(scope="module")
def slide_list(repo: Path) -> pd.DataFrame:
    return pd.read_csv(repo / "config" / "demo_slides.tsv", sep="\t", dtype={"mpp": str})


@pytest.fixture(scope="module")
def sources(repo: Path) -> dict[str, Path]:
    return {key: repo / path for key, path in DEFAULT_SOURCES.items()}


@pytest.fixture(scope="module")
def extreme_slides(demo_csv: Path) -> tuple[str, str]:
    """Synthetic slide ids of the highest- and the lowest-risk demo patient."""
    table = load_clinical_table(demo_csv)
    ranked = risk_percentiles(table).sort_values()
    return f"demo-{ranked.index[-1]}.tiff", f"demo-{ranked.index[0]}.tiff"


@pytest.fixture(scope="module")
def generated(tmp_path_factory, demo_csv, sources, extreme_slides) -> dict[str, Path]:
    """The two extreme patients' slides, generated without logit noise."""
    out = tmp_path_factory.mktemp("demo_slides")
    paths = {}
    for label, slide_id in zip(("high", "low"), extreme_slides):
        paths[label] = out / slide_id
        generate_demo_slide(slide_id, paths[label], demo_csv, sources, seed=0, options={"noise": 0.0})
    return paths


def test_generated_slide_opens_with_mpp_and_pyramid(generated):
    with openslide.OpenSlide(generated["high"]) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.5)
        assert slide.dimensions == (2048, 2048)
        assert slide.level_count >= 2
        assert slide.level_downsamples[1] == pytest.approx(2.0)
        region = np.asarray(slide.read_region((768, 768), 0, (512, 512)).convert("RGB"))
        assert region.shape == (512, 512, 3)
        assert tissue_mask(region).mean() > 0.3  # the centre of the canvas holds tissue
        corner = np.asarray(slide.read_region((0, 0), slide.level_count - 1, (16, 16)).convert("RGB"))
        assert tissue_mask(corner).mean() < 0.1  # the corner is empty glass


def test_generation_is_deterministic_and_cli_matches(tmp_path, demo_csv, sources, extreme_slides):
    slide_id = extreme_slides[0]
    via_function = tmp_path / "a.tiff"
    generate_demo_slide(slide_id, via_function, demo_csv, sources, seed=3)
    via_cli = tmp_path / "b.tiff"
    args = ["--slide-id", slide_id, "--clinical", str(demo_csv), "--out", str(via_cli), "--seed", "3"]
    args += ["--low-risk-slide", str(sources["low_risk"]), "--high-risk-slide", str(sources["high_risk"])]
    assert main(args) == 0
    assert via_function.read_bytes() == via_cli.read_bytes()
    other_seed = tmp_path / "c.tiff"
    generate_demo_slide(slide_id, other_seed, demo_csv, sources, seed=4)
    assert other_seed.read_bytes() != via_function.read_bytes()


def test_tissue_mix_follows_real_risk(generated, demo_csv, extreme_slides):
    table = load_clinical_table(demo_csv)
    high, low = (plan_slide(slide_id, table, 0, {"noise": 0.0}) for slide_id in extreme_slides)
    assert high.risk_percentile > 0.95 and low.risk_percentile < 0.05
    assert high.high_risk_share > 0.7 > 0.3 > low.high_risk_share
    # The high-risk source (frozen carcinoma) is pinker, the low-risk one (skin) more purple.
    redness = {}
    for label, path in generated.items():
        with openslide.OpenSlide(path) as slide:
            rgb = np.asarray(slide.read_region((0, 0), 1, slide.level_dimensions[1]).convert("RGB"))
        tissue = rgb[tissue_mask(rgb)].astype(float)
        redness[label] = float((tissue[:, 0] - tissue[:, 2]).mean())
    assert redness["high"] > redness["low"] + 10


def test_dense_tissue_follows_the_planted_group_score_not_the_risk(demo_csv, repo):
    table = load_clinical_table(demo_csv)
    signatures = repo / "data" / "tcga" / "signatures.csv"
    score = genomic_scores(table, DEFAULTS["genomic_group"], signatures)
    risk = risk_percentiles(table).loc[score.index]
    assert abs(score.mean()) < 1e-9 and score.std(ddof=0) == pytest.approx(1.0)
    assert abs(np.corrcoef(score, risk)[0, 1]) < 1e-9  # independent of the survival link, by construction
    # The score is the group's own: the mean z-score of its RNA columns, less its risk part.
    groups = gene_groups(list(table.columns), read_signatures(signatures))
    rna = table.drop_duplicates("case_id").set_index("case_id")[groups[DEFAULTS["genomic_group"]]].astype(float)
    raw = ((rna - rna.mean()) / rna.std(ddof=0)).mean(axis=1)
    assert np.corrcoef(score, raw.loc[score.index])[0, 1] > 0.9
    slide_ids = [s for s in table["slide_id"] if s.startswith("demo-")]
    plans = [plan_slide(s, table, 0, {}, signatures) for s in slide_ids]
    dense = [p.dense_share for p in plans]
    assert np.corrcoef([p.genomic_score for p in plans], dense)[0, 1] > 0.8
    assert abs(np.corrcoef([p.risk_percentile for p in plans], dense)[0, 1]) < 0.3
    off = [plan_slide(s, table, 0, {"genomic_strength": 0.0}, signatures) for s in slide_ids]
    assert [p.high_risk_share for p in off] == [p.high_risk_share for p in plans]  # survival link unchanged
    assert abs(np.corrcoef([p.genomic_score for p in plans], [p.dense_share for p in off])[0, 1]) < 0.3
    with pytest.raises(InputError, match="genomic_group 'Nope' is not a group"):
        genomic_scores(table, "Nope", signatures)


def test_dense_crops_hold_more_dark_nuclei_than_sparse_ones(sources):
    opened = open_sources(sources, resolve_options({}))
    rng = np.random.default_rng(0)
    for source in opened.values():
        dark = {kind: np.mean([(source.random_crop(rng, kind).mean(axis=2) < 130).mean() for _ in range(20)])
                for kind in ("dense", "sparse")}
        assert dark["dense"] > dark["sparse"] + 0.1, dark


def test_risk_percentile_ranks_early_death_above_long_follow_up(demo_csv):
    table = load_clinical_table(demo_csv).drop_duplicates("case_id")
    percentiles = risk_percentiles(table)
    events = table[table["censorship"] == 0]
    censored = table[table["censorship"] == 1]
    earliest_death = events.loc[events["survival_months"].idxmin(), "case_id"]
    longest_censored = censored.loc[censored["survival_months"].idxmax(), "case_id"]
    assert percentiles[earliest_death] > 0.9
    assert percentiles[longest_censored] < 0.1
    assert percentiles.between(0, 1).all()


def test_bad_input_names_the_problem(tmp_path, demo_csv, sources):
    with pytest.raises(InputError, match="not in the clinical table"):
        generate_demo_slide("demo-NOT-A-CASE.tiff", tmp_path / "x.tiff", demo_csv, sources)
    with pytest.raises(InputError, match="unknown key"):
        generate_demo_slide("demo-NOT-A-CASE.tiff", tmp_path / "x.tiff", demo_csv, sources, options={"colour": 1})
    assert not (tmp_path / "x.tiff").exists()


def test_demo_table_is_forty_real_blca_patients(demo_table, blca_table):
    patients = demo_table.drop_duplicates("case_id")
    assert len(patients) == 40
    assert 0.4 <= (patients["censorship"] == 0).mean() <= 0.6
    assert set(MCAT_COLUMNS) <= set(demo_table.columns)
    source = pd.read_csv(blca_table, compression="zip")
    genes = [c for c in source.columns if c.endswith(("_mut", "_cnv", "_rnaseq"))]
    assert [c for c in demo_table.columns if c.endswith(("_mut", "_cnv", "_rnaseq"))] == genes
    # Each demo row is its patient's real row (rnaseq rounded to 4 decimals).
    real = source.set_index("slide_id").loc[patients["source_slide_id"]]
    np.testing.assert_allclose(patients[genes].to_numpy(float), real[genes].to_numpy(float), atol=1e-4)
    np.testing.assert_array_equal(patients["survival_months"], real["survival_months"])
    np.testing.assert_array_equal(patients["censorship"], real["censorship"])


def test_demo_slides_match_the_table(demo_table, slide_list, repo):
    assert list(slide_list.columns) == ["slide_id", "path", "mpp"]
    assert list(slide_list["slide_id"]) == list(demo_table["slide_id"])
    synthetic = slide_list["slide_id"].str.startswith("demo-")
    assert synthetic.sum() == 40
    assert set(slide_list.loc[~synthetic, "slide_id"]) == REAL_SLIDES
    assert (slide_list.loc[synthetic, "path"] == "results/demo_slides/" + slide_list.loc[synthetic, "slide_id"]).all()
    for path in slide_list.loc[~synthetic, "path"]:
        assert (repo / path).is_file()
    # Every patient has exactly one synthetic slide; only the MPP-less TCGA slide has an MPP set.
    assert demo_table.loc[demo_table["slide_id"].str.startswith("demo-"), "case_id"].is_unique
    with_mpp = slide_list.dropna(subset=["mpp"])
    assert list(with_mpp["slide_id"]) == ["TCGA-CR-7395-01A-01-TS1.svs"]
    assert float(with_mpp["mpp"].iloc[0]) == pytest.approx(0.2527)
