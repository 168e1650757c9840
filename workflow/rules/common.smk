# Shared tables, paths and input functions. Rules stay thin: each calls one `ghanet-wf` subcommand.

import json
import shlex
from pathlib import Path

from snakemake.logging import logger

# ---------------------------------------------------------------- paths

REPO = Path(workflow.basedir)
COHORT = config["cohort"]
RESULTS = f"results/{COHORT}"
LOGS = f"logs/{COHORT}"
ENCODER = config["features"]["encoder"]
FOLDS = list(range(config["splits"]["k"]))
MODELS = config["training"]["models"]
DEMO_SLIDE_DIR = "results/demo_slides"
# Real tissue the synthetic demo slides are cut from (see data/SOURCES.md).
DEMO_SOURCES = {
    "low_risk": "data/slides/CMU-1-Small-Region.svs",
    "high_risk": "data/slides/TCGA-CR-7395-01A-01-TS1.svs",
}

# Every rule calls `python -m ghanet_workflow.cli <stage>` with the interpreter on PATH (the
# project's venv, or a conda env from envs/); PYTHONPATH makes the checkout's package importable
# in either case, on the submit host and on cluster nodes alike.
shell.prefix(
    f"set -euo pipefail; export PYTHONPATH={shlex.quote(str(REPO / 'src'))}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)


def train_options():
    """What changes a fold's training: the training options (less RUN_SETTINGS) and the genomic preprocessing."""
    return json.dumps(
        {
            "training": output_settings("training"),
            "genomics": output_settings("genomics"),
        },
        sort_keys=True,
    )


def parent_dir(name):
    """Params function: the folder of output ``name`` (keeps paths derived from outputs)."""

    def folder(wildcards, output):
        return str(Path(output[name]).parent)

    return folder


def sibling_dir(name):
    """Params function: the folder of input ``name``."""

    def folder(wildcards, input):
        return str(Path(input[name]).parent)

    return folder


# Keys of a config section that change how a job runs, not what it writes. They reach the stage
# as a second --options object through the rule's `run_settings` resource, NOT through its params:
# Snakemake reruns a job whose params changed (never one whose resources did), and a new batch
# size, worker count or device must not requeue GPU jobs. (`training.models` and `features.slides_per_job` /
# `external_dir` shape the DAG itself and reach no stage.)
RUN_SETTINGS = {
    "features": (
        "batch_size",
        "patches_per_read",
        "num_workers",
        "prefetch_factor",
        "device",
        "progress",
        "slides_per_job",
        "external_dir",
    ),
    "training": ("models", "device"),
    "predict": ("slides", "models_from", "model", "device"),
}
# ...and those of them that the stages read (the rest only shape the DAG)
STAGE_RUN_SETTINGS = {
    "features": tuple(
        k
        for k in RUN_SETTINGS["features"]
        if k not in ("slides_per_job", "external_dir")
    ),
    "training": ("device",),
}


def output_settings(section):
    """A config section without its RUN_SETTINGS: what changes the outputs of the section's jobs."""
    skip = RUN_SETTINGS.get(section, ())
    return {k: v for k, v in (config.get(section) or {}).items() if k not in skip}


def options(section):
    """A config section (less RUN_SETTINGS) as JSON, passed to a subcommand with --options."""
    return json.dumps(output_settings(section), sort_keys=True)


def run_settings(section):
    """The RUN_SETTINGS of a section that its stage reads, as JSON (the second --options object)."""
    keys = STAGE_RUN_SETTINGS[section]
    values = {k: v for k, v in (config.get(section) or {}).items() if k in keys}
    return json.dumps(
        {section: values} if section == "training" else values, sort_keys=True
    )


FEATURES_RUN_SETTINGS = run_settings("features")
TRAINING_RUN_SETTINGS = run_settings("training")
PREDICT_RUN_SETTINGS = json.dumps(
    {"device": (config.get("predict") or {}).get("device") or "auto"}
)

# Resources of every job, in one place. GPU and big jobs grow with each attempt (retries in
# profiles/default): memory doubles (out-of-memory kills), time grows by half (time-limit kills
# resume from the checkpoint). A constant disk_mb spares Snakemake a stat of every input file of
# every job (its default is twice the input size), a third of a 10,000-slide dry run; SLURM
# ignores it.
SMALL_JOB = {"mem_mb": 2000, "runtime": 10, "disk_mb": 1000}
SLIDE_JOB = {"mem_mb": 2000, "runtime": 5, "disk_mb": 1000}


# ---------------------------------------------------------------- slide table


# The tables are read and checked by ghanet_workflow.slide_table (light: pandas and the standard
# library, never torch); a bad table stops the run here with the workflow's own message (stop),
# naming the file, line, column or config key.
import sys

from ghanet_workflow import slide_files, slide_table
from ghanet_workflow.errors import InputError
from ghanet_workflow.slide_set import SlideSet, chunk_keys
from ghanet_workflow.report import partial as partial_report
from ghanet_workflow.report.options import product_options

# Wildcard-safe key of a slide: its id without the file extension (the one every stage uses).
from ghanet_workflow.slides import slide_key


def stop(error):
    """A bad table: the workflow's own message on one line and exit status 1, no stack."""
    logger.error(f"Error: {error}")
    sys.exit(1)


if len(MODELS) > 1 and config["report"]["reference_model"] not in MODELS:
    stop(
        f"report.reference_model: {config['report']['reference_model']!r} is not one of training.models "
        f"{MODELS}; set it to the model the others are compared with"
    )


def load_slide_table():
    """One row per slide: slide_id, key, case_id, path, mpp, source, produced (by the demo rule), exists."""
    return slide_table.load_slide_table(
        config["clinical"],
        slides_dir=config["slides"].get("dir"),
        table=config["slides"].get("table"),
        produced_dir=DEMO_SLIDE_DIR,
    )


def find_external_features(slides):
    """key -> existing CLAM/TRIDENT feature file, for slides that have one in features.external_dir."""
    return slide_table.find_external_features(
        config["features"].get("external_dir"), slides.index
    )


try:
    SLIDES = load_slide_table()
    # Slides with bring-your-own features skip tiling and extraction (their slide file is not needed).
    EXTERNAL = find_external_features(SLIDES)
    slide_table.check_some_slide_on_disk(
        SLIDES,
        EXTERNAL,
        config["clinical"],
        config["slides"].get("dir"),
        config["slides"].get("table"),
    )
except InputError as error:
    stop(error)
TILED = SLIDES[SLIDES["exists"] & ~SLIDES.index.isin(list(EXTERNAL))]
ABSENT = SLIDES[~SLIDES["exists"] & ~SLIDES.index.isin(list(EXTERNAL))]
# slide key -> row as a plain dict: the per-job input/params functions below run for every slide job
# (10,000 slides: tens of thousands of calls in a dry run), where a dict lookup beats DataFrame.loc.
SLIDE_ROWS = SLIDES.to_dict("index")

try:
    _absent = slide_table.absent_slides_warning(
        SLIDES, ABSENT, config["splits"]["k"], config["clinical"]
    )
except InputError as error:
    stop(error)
if _absent:
    logger.warning(_absent)

# Encoder weights named in the config must exist before any slide is tiled (not in the GPU job).
_weights = config["features"].get("weights")
if _weights and len(TILED) and not Path(str(_weights)).expanduser().is_file():
    stop(
        f"config key features.weights = {_weights!r}: no such file; give the path of the encoder's "
        "weights (a .pth/.safetensors file on a shared file system), see config/README.md"
    )


wildcard_constraints:
    slide="[^/]+",
    encoder="[^/]+",
    model="[^/]+",
    fold=r"\d+",
    chunk=r"(chunk|import)\d+",


# ---------------------------------------------------------------- input functions


# The cohort's slides: input functions of tile_slide and extract_features (ghanet_workflow.slide_set).
SLIDES_PER_JOB = int(config["features"].get("slides_per_job", 16))
COHORT_SLIDES = SlideSet(SLIDE_ROWS, TILED.index, RESULTS, ENCODER, SLIDES_PER_JOB)
# Bring-your-own features: one import job per chunk of them (rule import_features).
IMPORT_CHUNKS = chunk_keys(EXTERNAL, SLIDES_PER_JOB, prefix="import")


def feature_files(wildcards=None):
    """Per-slide feature HDF5 files (written by the extraction and import chunk jobs)."""
    return [
        COHORT_SLIDES.feature_file(key) for key in sorted([*TILED.index, *EXTERNAL])
    ]


def feature_manifests(wildcards=None):
    return COHORT_SLIDES.manifests() + [
        COHORT_SLIDES.manifest_file(chunk) for chunk in IMPORT_CHUNKS
    ]


def find_damaged_slide_files():
    """{target: marker text} of the per-slide files deleted or truncated since their chunk job
    recorded them (target: the chunk manifest for a features file, the coords file itself).
    Main process only: a cluster job re-parses the workflow for its own job, whose markers exist.
    """
    if workflow.remote_exec or workflow.subprocess_exec:
        return {}
    damaged = {}
    for damage in slide_files.damaged_files(feature_manifests()):
        target = damage.path if damage.kind == "coords" else damage.manifest
        damaged.setdefault(target, []).append(damage)
        logger.warning(
            f"{damage.path} was {damage.reason} after it was made: that slide's "
            f"{'tiling' if damage.kind == 'coords' else 'features'} will be redone"
        )
    return dict(slide_files.redo_marker(t, d) for t, d in damaged.items())


NEW_REDO_MARKERS = find_damaged_slide_files()
REDO_MARKERS = slide_files.existing_markers(
    [f"{RESULTS}/tiles", f"{RESULTS}/features/{ENCODER}/chunks"]
)
for _marker in NEW_REDO_MARKERS:
    REDO_MARKERS.setdefault(_marker.rsplit(slide_files.MARKER_INFIX, 1)[0], []).append(
        _marker
    )


def redo_markers(target):
    """Input function: the redo markers of one output (tile_slide, extraction chunks)."""

    def markers(wildcards):
        return REDO_MARKERS.get(target.format(**dict(wildcards.items())), [])

    return markers


def redo_marker_text(wildcards, output):
    return NEW_REDO_MARKERS.get(output[0], "")


def import_sources(wildcards):
    return [EXTERNAL[key] for key in IMPORT_CHUNKS[wildcards.chunk]]


def import_feature_files(wildcards):
    return [COHORT_SLIDES.feature_file(key) for key in IMPORT_CHUNKS[wildcards.chunk]]


def fold_outputs(name):
    return expand(
        f"{RESULTS}/models/{{model}}/fold_{{fold}}/{name}", model=MODELS, fold=FOLDS
    )


def report_options(product):
    """The `report:` options that one report product reads, as JSON (its rule's params)."""
    return json.dumps(product_options(config.get("report"), product), sort_keys=True)


def other_cohort_comparisons():
    """comparison.csv next to each `paper_table.other_cohorts` table, where that run wrote one."""
    siblings = (
        Path(path).parent / "comparison.csv"
        for path in config["paper_table"]["other_cohorts"]
    )
    return [str(path) for path in siblings if path.is_file()]


def report_outputs():
    """Every report product of the cohort: what `rule all` asks for."""
    products = [
        rules.report_cindex,
        rules.report_comparison,
        rules.report_training_curves,
        rules.report_failed_slides,
        rules.report_qc_sheet,
        rules.report_reconstruction,
        rules.report_attention,
        rules.paper_table,
    ]
    return [path for rule in products for path in rule.output]


# Written after a failed run, removed by the next complete C-index report (rule report_cindex).
PARTIAL_REPORT = f"{RESULTS}/report_partial"


def write_partial_report():
    """After a failed run (onerror): the report of whatever finished (ghanet_workflow.report.partial)."""
    if not Path(rules.build_cohort.output.patients).is_file():
        return
    message = partial_report.write_partial_report(
        PARTIAL_REPORT,
        f"{LOGS}/report_partial.log",
        REPO / "src",
        results=RESULTS,
        models=MODELS,
        folds=FOLDS,
        cohort=COHORT,
        encoder=ENCODER,
        target_mpp=config["tiling"]["target_mpp"],
        failure_logs=f"{LOGS}/train_fold",
        other_cohorts=config["paper_table"]["other_cohorts"],
        options=options("report"),
    )
    logger.warning(message)


# ---------------------------------------------------------------- resources (grow on retry)


def mem_mb_training(wildcards, attempt):
    """Training memory: base from the config, doubled on each retry (OOM kills)."""
    return int(config["resources"]["train_mem_mb"]) * 2 ** (attempt - 1)


def runtime_training(wildcards, attempt):
    """Training wall time in minutes: grows by half on each retry (time-limit kills resume from the checkpoint)."""
    return int(config["resources"]["train_runtime_min"] * (1 + 0.5 * (attempt - 1)))


def mem_mb_features(wildcards, attempt):
    return int(config["resources"]["features_mem_mb"]) * 2 ** (attempt - 1)


def runtime_features(wildcards, attempt):
    return int(config["resources"]["features_runtime_min"] * (1 + 0.5 * (attempt - 1)))


# ---------------------------------------------------------------- new slides to predict (predict.smk)

PREDICT = config.get("predict") or {}
PREDICT_DIR = f"{RESULTS}/predict"
PREDICT_MODEL = PREDICT.get("model") or "ghanet"
# null: this cohort's fold models, which Snakemake then trains first if needed
PREDICT_MODELS_FROM = PREDICT.get("models_from") or RESULTS


try:
    # New slides indexed by slide key (case_id, slide_id, path, mpp, exists); none without predict.slides.
    PREDICT_SLIDES = slide_table.load_predict_slides(PREDICT.get("slides"))
    slide_table.check_some_predict_slide_on_disk(PREDICT_SLIDES, PREDICT.get("slides"))
except InputError as error:
    stop(error)
# A new slide whose file is missing is not tiled: predict_risks gives its patient a row with the
# reason (ghanet-wf predict reads the same table) and scores the other patients.
PREDICT_TILED = PREDICT_SLIDES[PREDICT_SLIDES["exists"].astype(bool)]
PREDICT_ABSENT = PREDICT_SLIDES[~PREDICT_SLIDES["exists"].astype(bool)]
PREDICT_SLIDE_SET = SlideSet(
    PREDICT_SLIDES.to_dict("index"),
    PREDICT_TILED.index,
    PREDICT_DIR,
    ENCODER,
    SLIDES_PER_JOB,
)

if len(PREDICT_ABSENT):
    logger.warning(
        f"{len(PREDICT_ABSENT)} new slide(s) of predict.slides {PREDICT['slides']} are not on disk; "
        "their patients get a risks.csv row with the reason and no risk: "
        + ", ".join(PREDICT_ABSENT["path"].astype(str).head(5))
        + (", ..." if len(PREDICT_ABSENT) > 5 else "")
    )


def predict_slide_table(wildcards):
    if not PREDICT.get("slides"):
        stop(
            "config key predict.slides is empty: set it to a table of the new slides "
            "(case_id, slide_id, path, optional mpp), e.g. --config predict='{slides: new.csv}'"
        )
    return PREDICT["slides"]


def predict_model_files(wildcards):
    """model.pt of every fold: this cohort's (built by train_fold) or those found in predict.models_from."""
    if PREDICT_MODELS_FROM == RESULTS:
        return expand(
            f"{RESULTS}/models/{PREDICT_MODEL}/fold_{{fold}}/model.pt", fold=FOLDS
        )
    try:
        folders = slide_table.fold_model_dirs(PREDICT_MODELS_FROM, PREDICT_MODEL)
    except InputError as error:
        stop(error)
    return [str(folder / "model.pt") for folder in folders]


def predict_model_dirs(wildcards, input):
    return [str(Path(path).parent) for path in input.models]
