"""``ghanet-wf report <product> ...``: one report product per command (one Snakemake rule each).

Products: ``cindex`` (tables, out-of-fold predictions, KM and per-fold figures), ``comparison``
(each model against the reference model, with statistics), ``training-curves``,
``failed-slides``, ``qc-sheet``, ``reconstruction``, ``attention`` and ``paper`` (models x
cohorts from cindex.csv files). Without a product name, every cohort product is written: that is
how a user reports a results folder by hand (``--results-dir``) and how the partial report of a
failed run is made.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from ..errors import InputError
from ..options import parse_options
from . import attention, cindex, comparison, qc, reconstruction, training
from .inputs import discover_inputs, group_by_cohort, qc_pngs_in, qc_pngs_next_to
from .options import DEFAULTS, resolve_options
from .paper import write_paper_table

log = logging.getLogger(__name__)

#: the products of one cohort, in the order ``ghanet-wf report`` without a product writes them
COHORT_PRODUCTS = ("cindex", "comparison", "training-curves", "failed-slides", "qc-sheet", "reconstruction", "attention")
#: per-fold and per-slide input lists of the cohort products
INPUT_LISTS = {
    "--metrics": "per-fold metrics.json",
    "--predictions": "per-fold predictions.csv",
    "--training-logs": "per-fold training_log.csv",
    "--reconstruction": "per-fold reconstruction.csv",
    "--attention": "per-fold attention.h5 (G-HANet attention of a few test patients)",
    "--slides": "cohort slides.csv",
    "--qc": "tiling <slide>.qc.json files",
    "--qc-png": "tiling QC thumbnails (default: tiles/qc/<slide>.png next to each --qc file)",
}


def cohort_parser(product: str | None) -> argparse.ArgumentParser:
    """Arguments of ``ghanet-wf report [<product>]`` for one cohort."""
    parser = argparse.ArgumentParser(
        prog=f"ghanet-wf report {product or ''}".rstrip(),
        description="Report tables and figures of one cohort's folds "
        f"(products: {', '.join(COHORT_PRODUCTS)}; none named = all). "
        "'ghanet-wf report paper --help' for the models x cohorts table.",
    )
    for flag, help_text in INPUT_LISTS.items():
        parser.add_argument(flag, nargs="*", type=Path, default=None, help=help_text)
    parser.add_argument("--qc-png-dir", type=Path, help="folder of the QC thumbnails <slide key>.png (instead of --qc-png)")
    parser.add_argument(
        "--results-dir", type=Path, help="find every input under results/<cohort> (CONTRACTS layout)"
    )
    parser.add_argument(
        "--models", nargs="+", default=["ghanet"], help="models to look for with --results-dir"
    )
    parser.add_argument("--model", default="ghanet", help="model of per-fold files not under models/<model>/")
    parser.add_argument(
        "--failure-logs",
        type=Path,
        help="folder of training logs <model>_fold_<k>.log; a missing fold's reason is read from its log",
    )
    parser.add_argument("--cohort", help="cohort name (default: name of the folder above --out-dir)")
    parser.add_argument(
        "--by-cohort",
        action="store_true",
        help="comparison: the predictions are several cohorts' (results/<cohort>/models/...): one block each, and overall",
    )
    parser.add_argument("--folds", nargs="+", type=int, help="expected folds (default: every fold seen)")
    parser.add_argument("--encoder", help="feature encoder named in the QC summary")
    parser.add_argument("--target-mpp", type=float, help="target µm/px named in the QC summary")
    parser.add_argument("--out-dir", type=Path, help="report folder (default: <results-dir>/report)")
    parser.add_argument("--options", help="JSON object of report options (config section 'report')")
    parser.add_argument(
        "--replaces", type=Path, help="partial report of an earlier failed run: removed once this report is written"
    )
    return parser


def paper_parser() -> argparse.ArgumentParser:
    """Arguments of ``ghanet-wf report paper``."""
    parser = argparse.ArgumentParser(
        prog="ghanet-wf report paper", description="Models x cohorts table from per-cohort cindex.csv files."
    )
    parser.add_argument(
        "--cindex", nargs="+", type=Path, required=True, help="results/<cohort>/report/cindex.csv files"
    )
    parser.add_argument(
        "--comparison", nargs="*", type=Path, default=[], help="comparison.csv files: mark cells that differ from the reference"
    )
    parser.add_argument("--out-dir", type=Path, required=True, help="writes paper_table.md/.tex/.csv here")
    parser.add_argument("--options", help="JSON object of report options (config section 'report')")
    parser.add_argument(
        "--default-encoder",
        help="encoder of the plain model labels (config features.encoder), shown when some model label "
        "names another encoder (<model>@<label>)",
    )
    return parser


def _given_inputs(args: argparse.Namespace) -> dict[str, list[Path]]:
    """Each input list as given on the command line, else as found under --results-dir."""
    found = discover_inputs(args.results_dir, args.models) if args.results_dir else {}
    names = [flag[2:].replace("-", "_") for flag in INPUT_LISTS]
    return {name: getattr(args, name) if getattr(args, name) is not None else found.get(name, []) for name in names}


def run_cohort_products(args: argparse.Namespace, products: tuple[str, ...]) -> list[Path]:
    """Write the given products of one cohort; returns the files written."""
    given = _given_inputs(args)
    out_dir = args.out_dir or (args.results_dir / "report" if args.results_dir else None)
    if out_dir is None:
        raise InputError("report: pass --out-dir (or --results-dir)")
    options = resolve_options(parse_options(args.options, DEFAULTS, "report"))
    written: list[Path] = []
    if "cindex" in products:
        table, test = cindex.write_cindex_report(
            given["metrics"],
            given["predictions"],
            out_dir / "cindex.md",
            out_dir / "cindex.csv",
            out_dir / "predictions.csv",
            cohort=args.cohort or out_dir.resolve().parent.name,
            folds=args.folds,
            default_model=args.model,
            options=options,
            out_html=out_dir / "cindex.html",
            models=args.models if args.results_dir else None,
            failure_logs=args.failure_logs,
        )
        written += [out_dir / n for n in ("cindex.md", "cindex.html", "cindex.csv", "predictions.csv")]
        written += cindex.write_survival_figures(table, test, out_dir, options)
    if "comparison" in products and given["predictions"]:
        if args.by_cohort:  # several cohorts, each with its rows, and the overall rows
            by_cohort = group_by_cohort(given["predictions"])
        else:
            by_cohort = {args.cohort or out_dir.resolve().parent.name: given["predictions"]}
        comparison.write_comparison(by_cohort, out_dir, options)
        written += [out_dir / f"comparison.{ext}" for ext in ("md", "html", "csv", "tex")]
    if "training-curves" in products and given["training_logs"]:
        written += training.write_training_curves(
            given["training_logs"], out_dir / "training_curves.png", options, args.model
        )
    slides = None
    has_slides = bool(given["slides"] or given["qc"])
    if "failed-slides" in products and has_slides:
        slides = qc.write_failed_slides(
            given["slides"],
            out_dir / "failed_slides.md",
            out_dir / "failed_slides.csv",
            qc_jsons=given["qc"],
            encoder=args.encoder,
            target_mpp=args.target_mpp,
            options=options,
            out_html=out_dir / "failed_slides.html",
        )
        written += [out_dir / f"failed_slides.{ext}" for ext in ("md", "html", "csv")]
    elif {"qc-sheet", "attention"} & set(products) and has_slides:
        slides = qc.load_slide_table(given["slides"], given["qc"])
    if "qc-sheet" in products and slides is not None:
        pngs = given["qc_png"] or qc_pngs_in(args.qc_png_dir, slides) or qc_pngs_next_to(given["qc"])
        written += qc.write_qc_sheet(slides, pngs, out_dir / "qc_contact_sheet.png", options)
    if "reconstruction" in products and given["reconstruction"]:
        reconstruction.write_reconstruction_report(
            given["reconstruction"],
            out_dir / "reconstruction.md",
            out_dir / "reconstruction.csv",
            folds=args.folds,
            default_model=args.model,
            options=options,
            out_html=out_dir / "reconstruction.html",
            out_png=out_dir / "reconstruction.png",
        )
        written += [out_dir / f"reconstruction.{ext}" for ext in ("md", "html", "csv", "png")]
    if "attention" in products and given["attention"]:
        written += attention.write_attention_figure(
            given["attention"], out_dir / "attention_heatmaps.png", options, slides, args.model
        )
    return written


def run_paper_table(argv: list[str]) -> list[Path]:
    """``ghanet-wf report paper``: the models x cohorts table; returns the files written."""
    args = paper_parser().parse_args(argv)
    out = args.out_dir
    write_paper_table(
        args.cindex,
        out / "paper_table.md",
        out / "paper_table.tex",
        out / "paper_table.csv",
        parse_options(args.options, DEFAULTS, "report"),
        out_html=out / "paper_table.html",
        comparison_csvs=args.comparison,
        default_encoder=args.default_encoder,
    )
    return [out / f"paper_table.{ext}" for ext in ("md", "tex", "csv", "html")]


def main(argv: list[str]) -> int:
    """``ghanet-wf report [<product>] ...`` or ``ghanet-wf report paper ...``; InputError reaches cli.py."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    product = argv[0] if argv[:1] and not argv[0].startswith("-") else None
    if product == "paper":
        written = run_paper_table(argv[1:])
    elif product is None or product in COHORT_PRODUCTS:
        args = cohort_parser(product).parse_args(argv[1:] if product else argv)
        written = run_cohort_products(args, (product,) if product else COHORT_PRODUCTS)
        if args.replaces is not None:
            shutil.rmtree(args.replaces, ignore_errors=True)
    else:
        raise InputError(f"report: unknown product {product!r}; use one of {[*COHORT_PRODUCTS, 'paper']}")
    for path in written:
        log.info("wrote %s", path)
    return 0
