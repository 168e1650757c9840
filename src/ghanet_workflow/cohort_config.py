"""The cohorts and encoders of a run, from the config: one :class:`CohortConfig` per name under
``cohorts:``, one :class:`EncoderChoice` per patch encoder.

A run lists its cohorts by name (``cohorts: {tcga_blca: {clinical: ..., slides: ...}, ...}``);
each has its own clinical table, slides (or none: a genomic-only cohort), published splits and
filters, and may narrow the models it trains. Tiling, features, genomics, training and evaluation
settings are shared. The older single-cohort form (``cohort:`` + ``clinical:`` + ``slides:`` +
``filters:`` at the top level) is read as a run of one cohort, with the same outputs as before.

Encoders: ``features.encoder`` (with ``features.weights``) is the run's default encoder;
``features.encoders: {label: {encoder, weights, weights_sha256, models}}`` adds more. Tiling is
shared; each encoder has its features (``results/<cohort>/features/<label>/``, the default's label
is its registry name), its cohort table (``results/<cohort>/cohort@<label>/``) and its models,
which train on the cohort's one set of splits under the *model label* ``<model>@<label>``
(``results/<cohort>/models/ghanet@uni/fold_<k>/``). The default encoder's models keep their plain
names, so adding an encoder to a finished run adds jobs and reruns none.

Read while Snakemake parses the workflow: the standard library only. Mistakes are InputErrors
naming the config key and what to do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from .errors import InputError

#: models that read no slide features (the only ones a cohort without slides can train);
#: tests/test_cohort_config.py checks this against ``model.MODELS[...].uses_slides``
MODELS_WITHOUT_SLIDES = ("snn", "coxnet")
#: models trained without a GPU (rule train_fold_cpu asks for none)
CPU_MODELS = ("coxnet",)
#: ``splits`` keys a cohort may set for itself (``k`` is shared: every cohort has the same folds)
COHORT_SPLIT_KEYS = ("published_dir", "seed", "inner_val_fraction", "n_time_bins")
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
#: names that would collide with the run-level folders under results/
RESERVED_NAMES = ("report", "report_partial", "demo_slides")
#: joins a model and the label of the encoder it reads: ``ghanet@uni`` (the default encoder: ``ghanet``)
LABEL_SEPARATOR = "@"


@dataclass(frozen=True)
class EncoderChoice:
    """One patch encoder of the run: its label (results folder), registry name and weights."""

    label: str
    encoder: str
    weights: str | None = None
    weights_sha256: str | None = None
    #: the slide models trained on its features (None: every slide model of each cohort)
    models: tuple[str, ...] | None = None
    #: the config key of its settings, for messages ("features.encoders.uni" or "features")
    key: str = "features"

    def feature_options(self) -> dict:
        """The keys of config section ``features`` that this encoder sets (the extraction's options)."""
        return {"encoder": self.encoder, "weights": self.weights, "weights_sha256": self.weights_sha256}


def run_encoders(config: Mapping) -> dict[str, EncoderChoice]:
    """Label -> EncoderChoice of the run's encoders, the default (``features.encoder``) first."""
    features = config["features"]
    default = EncoderChoice(
        label=features["encoder"],
        encoder=features["encoder"],
        weights=features.get("weights"),
        weights_sha256=features.get("weights_sha256"),
    )
    encoders = {default.label: default}
    extra = features.get("encoders") or {}
    if extra and features.get("external_dir"):
        raise InputError(
            "config keys features.encoders and features.external_dir are both set: imported features come "
            "from one encoder and have no tiles to extract others from; remove one of them"
        )
    for label, settings in extra.items():
        key = f"features.encoders.{label}"
        if not NAME.match(str(label)):
            raise InputError(
                f"config key {key}: encoder label {label!r} cannot name a results folder; use letters, "
                "digits, '_', '.' or '-'"
            )
        if label == default.label:
            raise InputError(
                f"config key {key}: {label!r} is the default encoder (features.encoder) already; "
                "give the other encoder another label"
            )
        models = settings.get("models")
        if models is not None:
            reading_none = [m for m in models if m in MODELS_WITHOUT_SLIDES]
            if reading_none:
                raise InputError(
                    f"config key {key}.models: {reading_none} read no slide features, so an encoder "
                    f"changes nothing of them; list slide models only, or leave {key}.models out"
                )
            models = tuple(models)
        encoders[str(label)] = EncoderChoice(
            label=str(label),
            encoder=settings["encoder"],
            weights=settings.get("weights"),
            weights_sha256=settings.get("weights_sha256"),
            models=models,
            key=key,
        )
    return encoders


def model_label(model: str, encoder_label: str | None = None) -> str:
    """The name of a model trained on an encoder's features: ``ghanet@uni``; plain without a label."""
    return f"{model}{LABEL_SEPARATOR}{encoder_label}" if encoder_label else model


def split_model_label(label: str) -> tuple[str, str | None]:
    """(model, encoder label or None for the default encoder) of a model label."""
    model, _, encoder_label = str(label).partition(LABEL_SEPARATOR)
    return model, encoder_label or None


@dataclass(frozen=True)
class CohortConfig:
    """One cohort of the run: where its tables and slides are, and what it trains."""

    name: str
    clinical: str
    slides_dir: str | None
    slides_table: str | None
    models: tuple[str, ...]
    splits: Mapping = field(default_factory=dict)
    filters: Mapping = field(default_factory=dict)
    #: the config key of this cohort's settings, for messages ("cohorts.tcga_blca" or "")
    key: str = ""
    #: labels of the encoders other than the default whose models it trains (none without slides)
    encoders: tuple[str, ...] = ()

    @property
    def has_slides(self) -> bool:
        return bool(self.slides_dir or self.slides_table)

    @property
    def results(self) -> str:
        return f"results/{self.name}"

    @property
    def logs(self) -> str:
        return f"logs/{self.name}"

    def config_key(self, name: str) -> str:
        """The config key of one of this cohort's settings, as the user wrote it."""
        return f"{self.key}.{name}" if self.key else name


def run_cohorts(config: Mapping, encoders: Mapping[str, EncoderChoice] | None = None) -> dict[str, CohortConfig]:
    """Name -> CohortConfig of every cohort of a (schema-validated) config, in the config's order.

    With ``encoders`` (:func:`run_encoders`), a cohort with slides also trains its slide models on
    each encoder other than the default, as model labels ``<model>@<label>``.
    """
    listed = config.get("cohorts")
    single = {key: config[key] for key in ("cohort", "clinical") if config.get(key)}
    if listed and single:
        raise InputError(
            f"config keys {' and '.join(sorted(single))} and cohorts are both set: list every cohort under "
            "cohorts (cohorts: {name: {clinical: ..., slides: {dir: ...}}}) and remove the top-level keys"
        )
    shared_models = tuple(config["training"]["models"])
    if not listed:
        missing = [key for key in ("cohort", "clinical") if key not in single]
        if missing:
            raise InputError(
                f"config key {missing[0]} is required: give cohort (a name) and clinical (its table), "
                "or list the cohorts under cohorts: {name: {clinical: ..., slides: {dir: ...}}} (config/README.md)"
            )
        slides = config.get("slides") or {}
        listed = {config["cohort"]: {"clinical": config["clinical"], "slides": slides, "filters": config.get("filters")}}
        key = ""
    else:
        key = "cohorts"
    cohorts = {}
    for name, settings in listed.items():
        cohort = _cohort(name, settings or {}, config, shared_models, f"{key}.{name}" if key else "")
        cohorts[name] = _with_encoders(cohort, list((encoders or {}).values())[1:])
    return cohorts


def _with_encoders(cohort: CohortConfig, extra: list[EncoderChoice]) -> CohortConfig:
    """The cohort with its slide models on each extra encoder added (after its own models)."""
    if not cohort.has_slides or not extra:
        return cohort
    slide_models = [m for m in cohort.models if m not in MODELS_WITHOUT_SLIDES]
    labels, labelled = [], []
    for choice in extra:
        models = [m for m in slide_models if choice.models is None or m in choice.models]
        if models:
            labels.append(choice.label)
            labelled += [model_label(m, choice.label) for m in models]
    return replace(cohort, models=cohort.models + tuple(labelled), encoders=tuple(labels))


def _cohort(name: str, settings: Mapping, config: Mapping, shared_models: tuple, key: str) -> CohortConfig:
    where = key or "cohort"
    if not NAME.match(str(name)) or name in RESERVED_NAMES:
        raise InputError(
            f"config key {where}: cohort name {name!r} cannot name a results folder; use letters, digits, "
            f"'_', '.' or '-' (not {', '.join(RESERVED_NAMES)})"
        )
    if not settings.get("clinical"):
        raise InputError(f"config key {where}.clinical is missing: give the cohort's MCAT-format clinical table")
    slides = settings.get("slides") or {}
    has_slides = bool(slides.get("dir") or slides.get("table"))
    models = tuple(settings.get("models") or ())
    needing = [m for m in shared_models if m not in MODELS_WITHOUT_SLIDES]
    if not key and not has_slides and needing:  # the one cohort of the run: training.models is its own list
        raise InputError(
            "config key slides.dir is empty (and slides.table): give the folder of the slide files "
            f"(named by the clinical table's slide_id), or, for a cohort without slides, set training.models "
            f"to models that need none ({list(MODELS_WITHOUT_SLIDES)}); training.models is {list(shared_models)}"
        )
    if not models:  # the shared list; a listed cohort without slides keeps the models that need none
        models = shared_models if has_slides else tuple(m for m in shared_models if m in MODELS_WITHOUT_SLIDES)
        if not models:
            raise InputError(
                f"cohort {name!r} has no slides ({key}.slides is empty) and training.models "
                f"{list(shared_models)} all need slides: give it models ({key}.models) from "
                f"{list(MODELS_WITHOUT_SLIDES)}, or its slides ({key}.slides.dir or .table)"
            )
    elif not has_slides:
        needing = [m for m in models if m not in MODELS_WITHOUT_SLIDES]
        if needing:
            raise InputError(
                f"config key {key}.models: {needing} need slides, and cohort {name!r} has none "
                f"({key}.slides is empty); a cohort without slides trains only {list(MODELS_WITHOUT_SLIDES)}: "
                f"remove {needing} or give the cohort its slides ({key}.slides.dir or .table)"
            )
    splits = {**config.get("splits", {}), **(settings.get("splits") or {})}
    filters = settings.get("filters")
    return CohortConfig(
        name=str(name),
        clinical=str(settings["clinical"]),
        slides_dir=slides.get("dir"),
        slides_table=slides.get("table"),
        models=models,
        splits=splits,
        filters=dict(config.get("filters") or {} if filters is None else filters),
        key=key,
    )


def check_reference_model(cohorts: Mapping[str, CohortConfig], reference: str) -> None:
    """Stop when models are compared but no cohort trains the one report.reference_model names.

    A cohort that does not train it (a genomic-only cohort next to slide cohorts) is left out of
    the comparison, which says so.
    """
    compared = [cohort for cohort in cohorts.values() if len(cohort.models) > 1]
    if compared and not any(reference in cohort.models for cohort in compared):
        models = sorted({m for cohort in compared for m in cohort.models})
        raise InputError(
            f"report.reference_model: {reference!r} is not trained in any cohort (models: {models}); "
            "set it to the model the others are compared with"
        )
