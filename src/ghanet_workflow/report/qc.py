"""The slides products: the failed-slides page with the cohort's tiling QC summary, and the QC contact sheet."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from .. import plots
from ..atomic import write_csv, write_text
from ..errors import InputError
from ..slides import slide_key
from .inputs import read_csv
from .options import resolve_options
from .text import html_page

SLIDE_COLUMNS = ("slide_id", "status")


def load_slide_table(
    slides_csvs: Iterable[str | Path] = (), qc_jsons: Iterable[str | Path] = ()
) -> pd.DataFrame:
    """One row per slide from the cohort slides.csv and/or tiling QC JSONs (slides.csv wins on conflicts)."""
    frames = []
    for path in map(Path, slides_csvs):
        frame = _checked_slides(read_csv(path), path)
        frames.append(frame.assign(slide_key=frame["slide_id"].astype(str).map(slide_key)))
    qc_rows = [_read_qc_json(Path(p)) for p in qc_jsons]
    if qc_rows:
        frames.append(pd.DataFrame(qc_rows))
    if not frames:
        raise InputError("failed-slides table: no slides.csv or QC JSON given; pass --slides and/or --qc")
    merged = pd.concat(frames, ignore_index=True).groupby("slide_key", sort=False).first().reset_index()
    merged["reason"] = merged["reason"].fillna("") if "reason" in merged else ""
    return merged


def _checked_slides(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """A slides table with its required columns, else InputError naming the file."""
    missing = [c for c in SLIDE_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; a slides table needs {list(SLIDE_COLUMNS)}")
    return frame


def _read_qc_json(path: Path) -> dict:
    """One tiling QC row keyed by its file name; a missing or unreadable file becomes a failed row saying so."""
    key = path.name.removesuffix(".qc.json")
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {
            "slide_key": key,
            "slide_id": key,
            "status": "failed",
            "reason": f"QC file unreadable: {path} ({exc})",
        }
    fields = {k: v for k, v in row.items() if not isinstance(v, (dict, list))}
    return {"slide_id": key, **fields, "slide_key": key}


def qc_summary_markdown(
    slides: pd.DataFrame, encoder: str | None, target_mpp: float | None, tablefmt: str
) -> str:
    """Cohort QC: slides per status, patches per usable slide (min/median/max), encoder and resolution."""
    counts = slides["status"].value_counts().rename_axis("Status").reset_index(name="Slides")
    lines = [
        tabulate(
            counts.values.tolist(), headers=["Status", "Slides"], tablefmt=tablefmt, disable_numparse=True
        ),
        "",
    ]
    patches = (
        pd.to_numeric(slides.loc[slides["status"] == "ok", "n_patches"], errors="coerce").dropna()
        if "n_patches" in slides
        else pd.Series(dtype=float)
    )
    if len(patches):
        lines.append(
            f"- Patches per usable slide: min {int(patches.min())}, median {patches.median():g}, max {int(patches.max())}"
        )
    lines.append(f"- Encoder: {encoder or _encoder_from_paths(slides) or 'not given'}")
    lines.append(f"- Target resolution: {f'{target_mpp:g} µm/px' if target_mpp else 'not given'}")
    if "mpp_source" in slides:
        sources = slides["mpp_source"].dropna().value_counts()
        lines.append(
            "- Slide MPP source: " + (", ".join(f"{k}: {v}" for k, v in sources.items()) or "not recorded")
        )
    return "\n".join(lines) + "\n"


def _encoder_from_paths(slides: pd.DataFrame) -> str | None:
    """Encoder name from CONTRACTS feature paths ``.../features/<encoder>/<slide>.h5``, if unique."""
    if "features_path" not in slides:
        return None
    names = {Path(p).parent.name for p in slides["features_path"].dropna().astype(str) if p}
    return names.pop() if len(names) == 1 else None


def write_failed_slides(
    slides_csvs: Iterable[str | Path],
    out_md: str | Path,
    out_csv: str | Path,
    *,
    qc_jsons: Iterable[str | Path] = (),
    encoder: str | None = None,
    target_mpp: float | None = None,
    options: Mapping | None = None,
    out_html: str | Path | None = None,
) -> pd.DataFrame:
    """Table of slides whose status is not ``ok``, with reasons, plus the cohort QC summary.

    Writes ``out_md`` (failed slides, or an explicit 'none failed' line; then the QC summary),
    ``out_csv`` (the failed rows) and ``out_html`` (the page as HTML). Returns the full slide table.
    """
    options = resolve_options(options)
    slides = load_slide_table(slides_csvs, qc_jsons)
    failed = slides[slides["status"] != "ok"]
    columns = [c for c in ("slide_id", "case_id", "status", "reason") if c in slides.columns]
    write_text(out_md, failed_slides_page(slides, failed[columns], encoder, target_mpp, options["tablefmt"]))
    if out_html is not None:
        page = failed_slides_page(slides, failed[columns], encoder, target_mpp, "html")
        write_text(out_html, html_page("Failed slides", page))
    write_csv(out_csv, failed[columns])
    return slides


def failed_slides_page(
    slides: pd.DataFrame, failed: pd.DataFrame, encoder: str | None, target_mpp: float | None, tablefmt: str
) -> str:
    """Markdown page: the failed slides with reasons (or 'None failed'), then the cohort QC summary."""
    if failed.empty:
        failed_text = f"None failed: all {len(slides)} slides were usable.\n"
    else:
        failed_text = (
            f"{len(failed)} of {len(slides)} slides were not usable and are left out of training:\n\n"
            + tabulate(
                failed.fillna("").values.tolist(),
                headers=list(failed.columns),
                tablefmt=tablefmt,
                disable_numparse=True,
            )
            + "\n"
        )
    summary = qc_summary_markdown(slides, encoder, target_mpp, tablefmt)
    return f"# Failed slides\n\n{failed_text}\n## Cohort QC\n\n{summary}"


def write_qc_sheet(
    slides: pd.DataFrame, qc_pngs: Iterable[str | Path], out_path: Path, options: dict
) -> list[Path]:
    """Tiling QC contact sheet: every given PNG, plus an empty tile for each unusable slide without one."""
    thumbnails: dict[str, Path | None] = {Path(p).stem: Path(p) for p in qc_pngs}
    statuses = dict(zip(slides["slide_key"], slides["status"].astype(str)))
    for key, status in statuses.items():
        if status != "ok":
            thumbnails.setdefault(key, None)
    return plots.plot_qc_contact_sheet(
        thumbnails, statuses, out_path, int(options["max_thumbnails"]), options["formats"]
    )


def slide_paths(slides: pd.DataFrame | None) -> dict[str, str]:
    """slide key -> slide file, from the tiling QC rows (``slide_path``) of the slide table."""
    if slides is None or "slide_path" not in slides:
        return {}
    known = slides.dropna(subset=["slide_path"])
    return dict(zip(known["slide_key"], known["slide_path"].astype(str)))
