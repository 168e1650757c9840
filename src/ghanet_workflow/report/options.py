"""Report options (config section ``report``) and which of them each report product reads.

Light on purpose: common.smk imports it on every DAG parse, to give each report rule only the
options that change its own outputs (a new ``top_genes`` reruns the reconstruction table alone).
"""

from __future__ import annotations

from collections.abc import Mapping

from tabulate import tabulate_formats

from ..errors import InputError

#: Config options (config section ``report``).
DEFAULTS: dict = {
    "decimals": 3,  # digits after the decimal point in every table
    "std_ddof": 1,  # delta degrees of freedom of the std over folds (1 = sample std, 0 = population)
    "tablefmt": "github",  # tabulate format of the markdown tables
    "km_groups": 2,  # predicted risk groups in the KM plot (2 = median cut; g = training-risk g-quantiles)
    "formats": ["png"],  # figure formats (png always; add svg and/or pdf)
    "paper_metric": "cindex_harrell",  # cindex.csv column summarised in the paper table
    "top_genes": 5,  # best-reconstructed genes named per signature group
    "max_thumbnails": 48,  # thumbnails on the tiling QC contact sheet (failed slides first)
    "attention_patients": 4,  # patients in the G-HANet attention figure (half highest-, half lowest-risk)
    "reference_model": "ghanet",  # the model every other one is compared with (comparison table, paper-table markers)
    "comparison_level": 0.95,  # bootstrap CI level; a difference is marked when p < 1 - level
    "comparison_bootstrap": 1000,  # paired bootstrap resamples of each fold's test patients
    "comparison_seed": 1,  # seed of the paired bootstrap
}
FIGURE_FORMATS = {"png", "svg", "pdf"}
#: report product (``ghanet-wf report <product>``, one Snakemake rule each) -> the options it reads
PRODUCT_OPTIONS: dict[str, tuple[str, ...]] = {
    "cindex": ("decimals", "std_ddof", "tablefmt", "km_groups", "formats"),
    "training-curves": ("formats",),
    "failed-slides": ("tablefmt",),
    "qc-sheet": ("max_thumbnails", "formats"),
    "reconstruction": ("decimals", "std_ddof", "tablefmt", "top_genes"),
    "attention": ("attention_patients", "formats"),
    "comparison": ("decimals", "tablefmt", "reference_model", "comparison_level", "comparison_bootstrap", "comparison_seed"),
    "paper": ("paper_metric", "decimals", "std_ddof", "tablefmt", "reference_model", "comparison_level"),
}


def resolve_options(options: Mapping | None) -> dict:
    """DEFAULTS overridden by ``options``; an unknown key or a bad value raises InputError."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise InputError(f"report options: unknown key(s) {unknown}; allowed: {sorted(DEFAULTS)}")
    merged = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    if merged["tablefmt"] not in tabulate_formats:
        raise InputError(
            f"report option tablefmt={merged['tablefmt']!r}: use one of tabulate's {tabulate_formats}"
        )
    if not set(merged["formats"]) <= FIGURE_FORMATS:
        raise InputError(f"report option formats={merged['formats']}: use some of {sorted(FIGURE_FORMATS)}")
    if int(merged["attention_patients"]) < 0:
        raise InputError(f"report option attention_patients={merged['attention_patients']}: use 0 or more")
    if not 0 < float(merged["comparison_level"]) < 1:
        raise InputError(f"report option comparison_level={merged['comparison_level']}: use a level between 0 and 1, e.g. 0.95")
    if int(merged["km_groups"]) < 2:
        raise InputError(f"report option km_groups={merged['km_groups']}: use 2 (median) or more")
    return merged


def product_options(options: Mapping | None, product: str) -> dict:
    """The part of the ``report`` section that ``product`` reads (what its Snakemake rule's params carry)."""
    return {k: v for k, v in (options or {}).items() if k in PRODUCT_OPTIONS[product]}
