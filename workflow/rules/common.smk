# Shared tables, paths and input functions. Rules stay thin: each calls one `ghanet-wf` subcommand.

import json
import re
import shlex
from pathlib import Path

from snakemake.logging import logger

# ---------------------------------------------------------------- paths

REPO = Path(workflow.basedir)
# Every cohort's outputs and logs: results/<cohort>/..., logs/<cohort>/... (the {cohort} wildcard);
# what compares the cohorts (the paper table) lies in results/report/.
RESULTS = "results/{cohort}"
LOGS = "logs/{cohort}"
RUN_REPORT = "results/report"
ENCODER = config["features"]["encoder"]
FOLDS = list(range(config["splits"]["k"]))
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
# size, worker count or device must not requeue GPU jobs. (`training.models` and `features.encoders` /
# `slides_per_job` / `external_dir` shape the DAG itself and reach no stage.)
RUN_SETTINGS = {
    "features": (
        "encoders",
        "batch_size",
        "patches_per_read",
        "num_workers",
        "prefetch_factor",
        "device",
        "progress",
        "slides_per_job",
        "external_dir",
    ),
    "training": ("models", "device", "cohort_on_gpu"),
    "predict": ("slides", "models_from", "model", "device"),
}
# ...and those of them that the stages read (the rest only shape the DAG)
STAGE_RUN_SETTINGS = {
    "features": tuple(
        k
        for k in RUN_SETTINGS["features"]
        if k not in ("encoders", "slides_per_job", "external_dir")
    ),
    "training": ("device", "cohort_on_gpu"),
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


# ---------------------------------------------------------------- cohorts and their slides


# The cohorts (ghanet_workflow.cohort_config) and their tables, read and checked by
# ghanet_workflow.slide_table (light: pandas and the standard library, never torch); a bad table or
# setting stops the run here with the workflow's own message (stop), naming the file, line, column
# or config key.
import sys

from ghanet_workflow import slide_files, slide_table
from ghanet_workflow import memory as memory_estimate
from ghanet_workflow.cohort_config import (
    CPU_MODELS,
    MODELS_WITHOUT_SLIDES,
    check_reference_model,
    run_cohorts,
    run_encoders,
    split_model_label,
)
from ghanet_workflow.errors import InputError
from ghanet_workflow.slide_set import SlideSet, by_cohort
from ghanet_workflow.report import partial as partial_report
from ghanet_workflow.report.options import product_options


def stop(error):
    """A bad table or setting: the workflow's own message on one line and exit status 1, no stack."""
    logger.error(f"Error: {error}")
    sys.exit(1)


SLIDES_PER_JOB = int(config["features"].get("slides_per_job", 16))
try:
    # the run's encoders by label, the default (features.encoder) first; its label is ENCODER
    ENCODERS = run_encoders(config)
    COHORTS = run_cohorts(config, ENCODERS)
    check_reference_model(COHORTS, config["report"]["reference_model"])
except InputError as error:
    _files = [str(f) for f in workflow.overwrite_configfiles] or ["config/config.yaml"]
    stop(f"{error} (config file: {', '.join(_files)})")
try:
    # Each cohort's slides to tile and featurise: the input functions of tile_slide, extract_features
    # and import_features (ghanet_workflow.slide_set), reached through the {cohort} wildcard (and
    # {encoder} for the features of an encoder other than the default). Tiles are shared.
    SLIDE_SETS = {}
    for _cohort in COHORTS.values():
        _slides, _absent = slide_table.cohort_slide_set(
            _cohort,
            encoder=ENCODER,
            slides_per_job=SLIDES_PER_JOB,
            external_dir=config["features"].get("external_dir"),
            produced_dir=DEMO_SLIDE_DIR,
        )
        SLIDE_SETS[_cohort.name] = {ENCODER: _slides} | {
            label: _slides.with_encoder(label) for label in _cohort.encoders
        }
        if _absent:
            logger.warning(f"cohort {_cohort.name}: {_absent}")
except InputError as error:
    stop(error)
COHORT_NAMES = list(COHORTS)


def names_pattern(names):
    """Wildcard constraint matching exactly these cohort names (nothing when there are none)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


# Cohorts with slides and without (genomic only): their cohort table is built by different rules.
SLIDE_COHORTS = names_pattern(n for n, c in COHORTS.items() if c.has_slides)
GENOMIC_COHORTS = names_pattern(n for n, c in COHORTS.items() if not c.has_slides)
# Models trained on a GPU (rule train_fold) and on CPUs only (rule train_fold_cpu, coxnet).
_MODELS = list(dict.fromkeys(m for c in COHORTS.values() for m in c.models))
GPU_MODELS = names_pattern(m for m in _MODELS if m not in CPU_MODELS)
CPU_MODEL_NAMES = names_pattern(m for m in _MODELS if m in CPU_MODELS)


def cohort_slides(name):
    """Input function: SlideSet function ``name`` of the job's cohort (and {encoder}, else the default)."""
    return by_cohort(SLIDE_SETS, name, ENCODER)


# The demo slides (made by the demo_slide rule): file name -> the clinical table of its cohort.
DEMO_CLINICAL = {
    Path(row["path"]).name: COHORTS[name].clinical
    for name, slides in SLIDE_SETS.items()
    for row in slides[ENCODER].rows.values()
    if row["produced"]
}

# Encoder weights named in the config must exist before any slide is tiled (not in the GPU job).
_tiles_some = any(slides[ENCODER].tiled for slides in SLIDE_SETS.values())
for _choice in ENCODERS.values():
    _weights = _choice.weights
    if _weights and _tiles_some and not Path(str(_weights)).expanduser().is_file():
        stop(
            f"config key {_choice.key}.weights = {_weights!r}: no such file; give the path of the encoder's "
            "weights (a .pth/.safetensors file on a shared file system), see config/README.md"
        )


def features_options(wildcards):
    """Params function: the `features` options of the job's {encoder} (the default's: its section as is)."""
    choice = ENCODERS[wildcards.encoder]
    return json.dumps(
        {**output_settings("features"), **choice.feature_options()}, sort_keys=True
    )


wildcard_constraints:
    cohort="[^/]+",
    slide="[^/]+",
    encoder=names_pattern(ENCODERS),  # a target naming an unknown label matches no rule
    model="[^/]+",
    fold=r"\d+",
    chunk=r"(chunk|import)\d+",


# ---------------------------------------------------------------- damaged per-slide files


def find_damaged_slide_files():
    """{target: marker text} of the per-slide files deleted or truncated since their chunk job
    recorded them (target: the chunk manifest for a features file, the coords file itself).
    Main process only: a cluster job re-parses the workflow for its own job, whose markers exist.
    """
    if workflow.remote_exec or workflow.subprocess_exec:
        return {}
    manifests = [
        path
        for sets in SLIDE_SETS.values()
        for slides in sets.values()
        for path in slides.all_manifests()
    ]
    damaged = {}
    for damage in slide_files.damaged_files(manifests):
        target = damage.path if damage.kind == "coords" else damage.manifest
        damaged.setdefault(target, []).append(damage)
        logger.warning(
            f"{damage.path} was {damage.reason} after it was made: that slide's "
            f"{'tiling' if damage.kind == 'coords' else 'features'} will be redone"
        )
    return dict(slide_files.redo_marker(t, d) for t, d in damaged.items())


NEW_REDO_MARKERS = find_damaged_slide_files()
REDO_MARKERS = slide_files.existing_markers(
    [
        folder
        for name in COHORT_NAMES
        for folder in (
            f"results/{name}/tiles",
            *(f"results/{name}/features/{label}/chunks" for label in SLIDE_SETS[name]),
        )
    ]
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


# ---------------------------------------------------------------- per cohort


def cohort_setting(function):
    """Params function: ``function(CohortConfig)`` of the job's cohort."""

    def setting(wildcards):
        return function(COHORTS[wildcards.cohort])

    return setting


def cohort_options(section):
    """Params function: a section the cohort may override (splits, filters), as JSON."""
    if section == "filters":
        return cohort_setting(
            lambda c: json.dumps({"filters": c.filters}, sort_keys=True)
        )
    return cohort_setting(
        lambda c: json.dumps(
            {
                k: v
                for k, v in c.splits.items()
                if k not in RUN_SETTINGS.get(section, ())
            },
            sort_keys=True,
        )
    )


def model_cohort_dir(cohort, model):
    """The cohort table a model label trains on: results/<cohort>/cohort, or cohort@<label> for an
    encoder other than the default (rule build_encoder_cohort)."""
    label = split_model_label(model)[1]
    return f"{COHORTS[cohort].results}/cohort" + (f"@{label}" if label else "")


def model_cohort_file(name):
    """Input function: file ``name`` of the cohort table that the job's {model} trains on."""

    def path(wildcards):
        return f"{model_cohort_dir(wildcards.cohort, wildcards.model)}/{name}"

    return path


def reads_slides(model):
    """Whether a model label's model reads slide features (all but snn and coxnet)."""
    return split_model_label(model)[0] not in MODELS_WITHOUT_SLIDES


def cohort_fold_outputs(cohort, name):
    return expand(
        f"results/{cohort.name}/models/{{model}}/fold_{{fold}}/{name}",
        model=cohort.models,
        fold=FOLDS,
    )


def fold_outputs(name):
    """Input function: file ``name`` of every (model, fold) of the job's cohort."""
    return cohort_setting(lambda cohort: cohort_fold_outputs(cohort, name))


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


# The products of each cohort (results/<cohort>/report/; the slides products only for a cohort
# with slides) and of the run (results/report/).
FOLD_PRODUCTS = (
    "report_cindex",
    "report_comparison",
    "report_training_curves",
    "report_reconstruction",
    "report_attention",
)
SLIDE_PRODUCTS = ("report_failed_slides", "report_qc_sheet")


def report_outputs():
    """Every report product of every cohort, and the paper table: what `rule all` asks for."""
    paths = []
    for cohort in COHORTS.values():
        products = FOLD_PRODUCTS + (SLIDE_PRODUCTS if cohort.has_slides else ())
        for name in products:
            paths += expand(getattr(rules, name).output, cohort=cohort.name)
    return paths + list(rules.paper_table.output)


def run_comparison():
    """The comparison.csv the paper table marks its cells from: the cohort's, or the run's over several."""
    if len(COHORT_NAMES) == 1:
        return f"results/{COHORT_NAMES[0]}/report/comparison.csv"
    return rules.report_comparison_all.output.csv


def write_partial_report():
    """After a failed run (onerror): the report of whatever finished (ghanet_workflow.report.partial)."""
    for cohort in COHORTS.values():
        if not Path(f"{cohort.results}/cohort/patients.csv").is_file():
            continue  # failed before its folds: nothing to report
        if all(Path(p).is_file() for p in cohort_fold_outputs(cohort, "metrics.json")):
            continue  # every fold finished: its report is (or will be) complete
        message = partial_report.write_partial_report(
            f"{cohort.results}/report_partial",
            f"{cohort.logs}/report_partial.log",
            REPO / "src",
            results=cohort.results,
            models=cohort.models,
            folds=FOLDS,
            cohort=cohort.name,
            encoder=ENCODER,
            target_mpp=config["tiling"]["target_mpp"],
            failure_logs=f"{cohort.logs}/train_fold",
            other_cohorts=config["paper_table"]["other_cohorts"],
            options=options("report"),
        )
        logger.warning(f"cohort {cohort.name}: {message}")


# ---------------------------------------------------------------- resources (grow on retry)


def feature_store_index(wildcards):
    """Input function: the packed features (rule pack_features) of the model's cohort table, for a model that reads slides."""
    if not reads_slides(wildcards.model):
        return []
    return f"{model_cohort_dir(wildcards.cohort, wildcards.model)}/feature_store/index.json"


def mem_mb_training(wildcards, attempt):
    """Training memory: estimated from the cohort's feature store once it is packed (largest bag and
    model size, ghanet_workflow.memory), else resources.train_mem_mb; doubled on each retry (OOM kills).
    """
    estimate = memory_estimate.training_mem_mb_from_files(
        model_cohort_dir(wildcards.cohort, wildcards.model),
        config["training"],
        reads_slides(wildcards.model),
    )
    return int(estimate or config["resources"]["train_mem_mb"]) * 2 ** (attempt - 1)


def runtime_training(wildcards, attempt):
    """Training wall time in minutes: grows by half on each retry (time-limit kills resume from the checkpoint)."""
    return int(config["resources"]["train_runtime_min"] * (1 + 0.5 * (attempt - 1)))


def mem_mb_features(wildcards, input, attempt):
    """Extraction memory: estimated from the chunk's largest slide (its coords file) and the encoder
    once tiled (ghanet_workflow.memory), else resources.features_mem_mb; doubled on each retry.
    """
    coords = getattr(input, "coords", None)
    label = (
        getattr(wildcards, "encoder", None) or PREDICT_ENCODER
    )  # predict_risks: none
    encoder = ENCODERS[label].feature_options()
    estimate = (
        memory_estimate.extraction_mem_mb_from_files(
            coords, {**config["features"], **encoder}
        )
        if coords
        else None
    )
    return int(estimate or config["resources"]["features_mem_mb"]) * 2 ** (attempt - 1)


def runtime_features(wildcards, attempt):
    return int(config["resources"]["features_runtime_min"] * (1 + 0.5 * (attempt - 1)))


# ---------------------------------------------------------------- new slides to predict (predict.smk)

PREDICT = config.get("predict") or {}
# the cohort whose fold models score the new slides (the first cohort unless predict.cohort names one)
PREDICT_COHORT = PREDICT.get("cohort") or COHORT_NAMES[0]
if PREDICT_COHORT not in COHORTS:
    stop(
        f"config key predict.cohort: {PREDICT_COHORT!r} is not a cohort of this run ({COHORT_NAMES}); "
        "name the cohort whose models score the new slides"
    )
PREDICT_RESULTS = COHORTS[PREDICT_COHORT].results
PREDICT_LOGS = COHORTS[PREDICT_COHORT].logs
PREDICT_DIR = f"{PREDICT_RESULTS}/predict"
PREDICT_MODEL = PREDICT.get("model") or "ghanet"
# the features the new slides need: those of the encoder the model label names (ghanet@uni: uni)
_PREDICT_LABEL = split_model_label(PREDICT_MODEL)[1]
PREDICT_ENCODER = _PREDICT_LABEL or ENCODER
if _PREDICT_LABEL is not None and _PREDICT_LABEL not in list(ENCODERS)[1:]:
    stop(
        f"config key predict.model: {PREDICT_MODEL!r} names encoder label {_PREDICT_LABEL!r}, which is not one "
        f"of features.encoders ({list(ENCODERS)[1:]}); the default encoder's models have plain names (ghanet)"
    )
# null: this cohort's fold models, which Snakemake then trains first if needed
PREDICT_MODELS_FROM = PREDICT.get("models_from") or PREDICT_RESULTS


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
    PREDICT_ENCODER,
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
    if PREDICT_MODELS_FROM == PREDICT_RESULTS:
        return expand(
            f"{PREDICT_RESULTS}/models/{PREDICT_MODEL}/fold_{{fold}}/model.pt",
            fold=FOLDS,
        )
    try:
        folders = slide_table.fold_model_dirs(PREDICT_MODELS_FROM, PREDICT_MODEL)
    except InputError as error:
        stop(error)
    return [str(folder / "model.pt") for folder in folders]


def predict_model_dirs(wildcards, input):
    return [str(Path(path).parent) for path in input.models]
