#!/usr/bin/env python
"""Build the embedded demo cohort from the real TCGA-BLCA table (run once; outputs are committed).

Writes
* ``data/demo/tcga_blca_demo.csv``: 40 real TCGA-BLCA patients, their real MCAT row (all columns,
  one slide row each) with ``slide_id`` renamed to a synthetic ``demo-<case_id>.tiff`` and the real
  slide id kept in ``source_slide_id``; plus three rows that attach the real slide files to three
  of these patients (their ``source_slide_id`` is empty: those files are not the patients' slides):
  ``CMU-1-Small-Region.svs`` (normal skin) to the lowest-risk patient, ``TCGA-CR-7395-01A-01-TS1.svs``
  (carcinoma) to the highest-risk patient, so both agree with the planted signal, and
  ``broken.svs`` (not a slide; must land in the failed-slides table) to the median-risk patient;
* ``config/demo_slides.tsv``: slide_id, path (relative to the repository root), mpp (empty = read
  from the file; 0.2527 for TCGA-CR-7395, whose file has no MPP: an assumption for the demo).

Patients: 20 with an observed death and 20 censored, five of each from every quartile of the
survival times of their group, drawn with a fixed seed.

Usage: python tools/make_demo_cohort.py [--seed 7] [--repo .]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ghanet_workflow.atomic import write_csv
from ghanet_workflow.demo import risk_percentiles

SOURCE_TABLE = "data/tcga/tcga_blca_all_clean.csv.zip"
DEMO_TABLE = "data/demo/tcga_blca_demo.csv"
SLIDE_TABLE = "config/demo_slides.tsv"
SYNTHETIC_DIR = "results/demo_slides"
REAL_SLIDE_DIR = "data/slides"
PER_GROUP_QUARTILE = 5  # patients per (event/censored) x survival-time quartile
TCGA_CR_ASSUMED_MPP = 0.2527  # assumption: the file carries no MPP; typical Aperio 40x value


def pick_patients(table: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """First slide row of 5 patients per (event status x survival-time quartile) cell."""
    patients = table.drop_duplicates("case_id").copy()
    chosen = []
    for _, group in patients.groupby("censorship"):
        quartile = pd.qcut(group["survival_months"], 4, labels=False)
        for _, cell in group.groupby(quartile):
            chosen.append(cell.iloc[rng.choice(len(cell), PER_GROUP_QUARTILE, replace=False)])
    return pd.concat(chosen).sort_values("case_id").reset_index(drop=True)


def demo_rows(patients: pd.DataFrame) -> pd.DataFrame:
    """The patients' rows with a synthetic slide id; the real id moves to ``source_slide_id``."""
    rows = patients.copy()
    rows.insert(rows.columns.get_loc("slide_id") + 1, "source_slide_id", rows["slide_id"])
    rows["slide_id"] = "demo-" + rows["case_id"] + ".tiff"
    return rows


def real_slide_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Copies of three patients' rows that point at the real slide files (see module docstring)."""
    by_risk = risk_percentiles(rows).sort_values()
    assignment = {
        "CMU-1-Small-Region.svs": by_risk.index[0],
        "TCGA-CR-7395-01A-01-TS1.svs": by_risk.index[-1],
        "broken.svs": by_risk.index[len(by_risk) // 2],
    }
    extra = []
    for slide_file, case_id in assignment.items():
        row = rows.loc[rows["case_id"] == case_id].iloc[[0]].copy()
        row["slide_id"] = slide_file
        row["source_slide_id"] = ""
        extra.append(row)
    return pd.concat(extra)


def slide_table(demo: pd.DataFrame) -> pd.DataFrame:
    """slide_id, path, mpp for every slide of the demo table."""
    synthetic = demo["slide_id"].str.startswith("demo-")
    paths = np.where(synthetic, SYNTHETIC_DIR + "/" + demo["slide_id"], REAL_SLIDE_DIR + "/" + demo["slide_id"])
    mpp = np.where(demo["slide_id"] == "TCGA-CR-7395-01A-01-TS1.svs", str(TCGA_CR_ASSUMED_MPP), "")
    return pd.DataFrame({"slide_id": demo["slide_id"], "path": paths, "mpp": mpp})


def round_rnaseq(table: pd.DataFrame, decimals: int = 4) -> pd.DataFrame:
    """Round the ``_rnaseq`` columns so the committed CSV stays small."""
    rnaseq = [c for c in table.columns if c.endswith("_rnaseq")]
    return table.assign(**{c: table[c].round(decimals) for c in rnaseq})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args(argv)
    source = pd.read_csv(args.repo / SOURCE_TABLE, compression="zip")
    rows = demo_rows(pick_patients(source, np.random.default_rng(args.seed)))
    demo = round_rnaseq(pd.concat([rows, real_slide_rows(rows)], ignore_index=True))
    write_csv(args.repo / DEMO_TABLE, demo)
    write_csv(args.repo / SLIDE_TABLE, slide_table(demo), sep="\t")
    events = int((demo.drop_duplicates("case_id")["censorship"] == 0).sum())
    print(f"{DEMO_TABLE}: {demo['case_id'].nunique()} patients ({events} events), {len(demo)} slide rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
