"""The tables and config the workflow reads while Snakemake builds its DAG, with the project's messages.

``workflow/rules/common.smk`` calls these at every ``snakemake`` start, on the submit host and in
every cluster job, before any rule runs: the clinical table's slide list, the optional slide
table (config ``slides.table``), the new slides to predict (``predict.slides``), the slides'
files on disk and the config itself. A bad table or key raises :class:`InputError` naming the
file, the line, the column or config key, and what to do; the Snakefile prints that message on
one line and stops, never a Python traceback.

The parse must stay light: pandas, PyYAML and the standard library only (plus jsonschema,
Snakemake's own dependency, for the row schemas ``workflow/schemas/slides.schema.yaml`` and
``predict_slides.schema.yaml``; where it is missing, as in a stage's conda environment, the
schema check is skipped: the workflow made it when it started). Never torch, h5py or a stage
module importing them: only :mod:`ghanet_workflow.slides` for the slide key (numpy; OpenSlide only
inside its reading functions) and :mod:`ghanet_workflow.cohort` (numpy, pandas) for the required columns.

Identifiers are kept as written (``0001`` stays ``0001``), surrounding blanks stripped as the
cohort stage does.
"""

from __future__ import annotations

import math
import re
import zipfile
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd
import yaml

from ghanet_workflow import external_features
from ghanet_workflow.cohort import REQUIRED_COLUMNS
from ghanet_workflow.errors import MAX_LISTED, InputError, listed
from ghanet_workflow.slides import slide_key

#: the workflow's schema folder (the package is used from the checkout: src/ghanet_workflow/)
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "workflow" / "schemas"
SLIDES_SCHEMA = SCHEMA_DIR / "slides.schema.yaml"
PREDICT_SCHEMA = SCHEMA_DIR / "predict_slides.schema.yaml"
CONFIG_SCHEMA = SCHEMA_DIR / "config.schema.yaml"
SEPARATORS = {"\t": "tab", ",": "comma", ";": "semicolon"}
PATH_SEPARATOR = re.compile(r"[/\\]")


# ----------------------------------------------------------------------------- helpers


def _rows(table: pd.DataFrame, mask: pd.Series | None = None, id_column: str = "slide_id") -> str:
    """Offending rows as 'line N (slide_id S)'; line 1 is the header."""
    rows = table if mask is None else table[mask.to_numpy()]
    return listed(f"line {line} ({id_column} {value})" for line, value in zip(rows["_line"], rows[id_column]))


def _source(what: str, path, key: str | None) -> str:
    return f"{what} {path}" + (f" (config key {key})" if key else "")


def _open_error(what: str, path: Path, key: str | None) -> InputError | None:
    """The message for a table path that is not a readable file, or None."""
    if path.is_dir():
        return InputError(f"{_source(what, path, key)} is a folder, not a table; set {key or 'it'} to the table file")
    if not path.is_file():
        return InputError(
            f"{_source(what, path, key)} not found (looked in {Path.cwd()}); set {key or 'it'} to an existing "
            "file, absolute or relative to the folder snakemake runs in"
        )
    return None


def _first_line(path: Path, what: str, key: str | None) -> str:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            for line in handle:
                if line.strip():
                    return line
    except UnicodeDecodeError as exc:
        raise InputError(f"{_source(what, path, key)} is not a UTF-8 text table ({exc}); save it as CSV/TSV") from exc
    raise InputError(f"{_source(what, path, key)} is empty: it needs a header line and one row per slide")


def _separator(header: str) -> str:
    """The separator of a header line: tab, comma or semicolon, whichever it holds most of."""
    counts = {sep: header.count(sep) for sep in SEPARATORS}
    return max(counts, key=counts.get) if any(counts.values()) else ","


def read_delimited(path: str | Path, what: str, key: str | None = None) -> pd.DataFrame:
    """A tab-, comma- or semicolon-separated table, every cell as text ("" when empty).

    Column names are stripped; column ``_line`` is each row's line number in the file (for messages).
    """
    path = Path(path)
    error = _open_error(what, path, key)
    if error:
        raise error
    sep = _separator(_first_line(path, what, key))
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise InputError(
            f"{_source(what, path, key)} cannot be read as a {SEPARATORS[sep]}-separated table ({exc}); "
            "every line needs the header's number of cells"
        ) from exc
    table.columns = [str(column).strip() for column in table.columns]
    if table.empty:
        raise InputError(f"{_source(what, path, key)} has a header line but no data row: add one row per slide")
    table["_line"] = range(2, len(table) + 2)
    return table


def _strip_ids(table: pd.DataFrame, columns: Sequence[str], what: str, path, key: str | None) -> None:
    """Identifier columns: surrounding blanks stripped; an empty cell raises naming its lines."""
    for column in columns:
        table[column] = table[column].astype(str).str.strip()
        blank = table[column] == ""
        if blank.any():
            lines = listed(table.loc[blank, "_line"])
            raise InputError(f"{_source(what, path, key)}: column {column} is empty on line(s) {lines}; every row needs one")


def _check_unique_slides(table: pd.DataFrame, what: str, path, key: str | None) -> None:
    """Each slide once, and no two slide ids equal once the file extension is dropped."""
    duplicated = table["slide_id"].duplicated(keep=False)
    if duplicated.any():
        raise InputError(
            f"{_source(what, path, key)}: duplicated slide_id on {_rows(table, duplicated)}; list each slide once"
        )
    keys = table["slide_id"].map(slide_key)
    colliding = keys.duplicated(keep=False)
    if colliding.any():
        raise InputError(
            f"{_source(what, path, key)}: slide ids equal once the file extension is dropped on "
            f"{_rows(table, colliding)}; outputs are named by that key, so rename one of the slides"
        )


# ----------------------------------------------------------------------------- row schemas


def _load_schema(path: Path) -> dict | None:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError:
        return None  # package used outside the checkout: the workflow checked the table at start


def _typed(value: str, prop: Mapping):
    """A text cell as the schema's type: numbers parsed (a non-number or nan/inf stays text, and fails)."""
    types = prop.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    if "number" in types or "integer" in types:
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    return value


def check_rows(table: pd.DataFrame, schema_path: Path, what: str, path, key: str | None = None) -> None:
    """Every row against the row schema; the bad cells are named by line, column and value.

    Empty cells are left out of the row (they mean "not given"). Skipped when jsonschema or the
    schema file is not available (``ghanet-wf`` in a stage's environment): the workflow checked
    the same table with it when it started.
    """
    try:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import best_match
    except ImportError:
        return
    schema = _load_schema(schema_path)
    if schema is None:
        return
    properties = schema.get("properties", {})
    unknown = [column for column in table.columns if column != "_line" and column not in properties]
    if unknown and schema.get("additionalProperties") is False:
        raise InputError(
            f"{_source(what, path, key)}: unknown column(s) {unknown}; the table takes {list(properties)} "
            f"(required: {schema.get('required', [])}). Check the header's spelling"
        )
    validator = Draft202012Validator(schema)
    columns = [column for column in table.columns if column in properties]
    problems = []
    for values in table[[*columns, "_line"]].itertuples(index=False, name=None):
        row = {column: _typed(value, properties[column]) for column, value in zip(columns, values) if value != ""}
        error = best_match(validator.iter_errors(row))
        if error is None:
            continue
        where = f"line {values[-1]}" + (f" (slide_id {row['slide_id']})" if "slide_id" in row else "")
        if error.path:
            column = str(error.path[0])
            hint = properties.get(column, {}).get("x-invalid") or error.message
            problems.append(f"{where}: column {column} = {error.instance!r} {hint}")
        elif error.validator == "required":
            missing = [name for name in error.validator_value if name not in row]
            problems.append(f"{where}: column(s) {missing} empty")
        else:
            problems.append(f"{where}: {error.message}")
    if problems:
        raise InputError(f"{_source(what, path, key)}: {len(problems)} bad row(s): {listed(problems)}")


# ----------------------------------------------------------------------------- clinical table


def _clinical_header(path: Path, key: str) -> list[str]:
    """Column names of the clinical table (csv, or zipped/gzipped csv)."""
    what = _source("clinical table", path, key)
    try:
        return list(pd.read_csv(path, nrows=0, compression="infer").columns)
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"{what} is empty: it needs a header line (case_id, slide_id, ...) and one row per slide") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise InputError(f"{what} cannot be read as a CSV table ({exc}); save it as CSV (or zipped CSV)") from exc


def read_clinical_ids(path: str | Path, key: str = "clinical") -> pd.DataFrame:
    """case_id and slide_id of every row of the clinical table (column ``_line``: the row's line).

    Checks what the DAG needs, from the header and the two id columns only (the cohort stage
    checks survival and genes): the file, the required columns, a table saved with semicolons or
    tabs (the MCAT format is comma-separated), rows, empty ids, ids that are paths, and
    duplicated slides.
    """
    path = Path(path)
    error = _open_error("clinical table", path, key)
    if error:
        raise error
    columns = _clinical_header(path, key)
    missing = [column for column in REQUIRED_COLUMNS if column not in columns]
    if missing:
        for sep, name in SEPARATORS.items():
            cells = [cell.strip() for column in columns for cell in str(column).split(sep)]
            if sep != "," and {"case_id", "slide_id"} <= set(cells):
                raise InputError(
                    f"{_source('clinical table', path, key)} is {name}-separated; the clinical table is read as "
                    "the MCAT format, comma-separated: save it as CSV with commas "
                    f"(e.g. pandas.read_csv(path, sep={sep!r}).to_csv(new_path, index=False)) and point {key} to it"
                )
        raise InputError(
            f"{_source('clinical table', path, key)}: missing required column(s) {missing}; an MCAT-format table "
            f"needs {list(REQUIRED_COLUMNS)} (censorship 1 = censored). Found: {listed(columns)}"
        )
    try:
        table = pd.read_csv(
            path, usecols=["case_id", "slide_id"], dtype=str, keep_default_na=False, compression="infer"
        )
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise InputError(f"{_source('clinical table', path, key)} cannot be read as a CSV table ({exc})") from exc
    if table.empty:
        raise InputError(
            f"{_source('clinical table', path, key)} has a header line but no data row: add one row per slide"
        )
    table = table[["case_id", "slide_id"]].copy()
    table["_line"] = range(2, len(table) + 2)
    _strip_ids(table, ["case_id", "slide_id"], "clinical table", path, key)
    paths = table["slide_id"].str.contains(PATH_SEPARATOR)
    if paths.any():
        raise InputError(
            f"{_source('clinical table', path, key)}: slide_id holds a path on {_rows(table, paths)}; a slide_id "
            "is the slide's file name: put the folder in config key slides.dir, or the full path in the "
            "path column of the slide table (slides.table)"
        )
    _check_unique_slides(table, "clinical table", path, key)
    return table


# ----------------------------------------------------------------------------- slide table


def read_slide_overrides(path: str | Path, known_slides: Iterable[str], key: str = "slides.table") -> pd.DataFrame:
    """The optional slide table: one row per slide_id of the clinical table, path and/or mpp.

    Returns it indexed by slide_id with ``path`` (str, "" = not given) and ``mpp`` (float, NaN =
    not given).
    """
    what = "slide table"
    table = read_delimited(path, what, key)
    if "slide_id" not in table:
        raise InputError(
            f"{_source(what, path, key)}: no slide_id column (found {listed(c for c in table.columns if c != '_line')}); "
            "the slide table has a header line with slide_id and path and/or mpp"
        )
    if "path" not in table and "mpp" not in table:
        raise InputError(f"{_source(what, path, key)}: give a path and/or an mpp column beside slide_id")
    _strip_ids(table, ["slide_id"], what, path, key)
    check_rows(table, SLIDES_SCHEMA, what, path, key)
    duplicated = table["slide_id"].duplicated(keep=False)
    if duplicated.any():
        raise InputError(f"{_source(what, path, key)}: duplicated slide_id on {_rows(table, duplicated)}; list each slide once")
    unknown = ~table["slide_id"].isin(set(known_slides))
    if unknown.any():
        raise InputError(
            f"{_source(what, path, key)}: slide_id(s) not in the clinical table on {_rows(table, unknown)}; "
            "fix the ids or add the slides' rows to the clinical table (config key clinical)"
        )
    table["path"] = table["path"].str.strip() if "path" in table else ""
    table["mpp"] = _mpp(table, what, path, key) if "mpp" in table else math.nan
    return table.set_index("slide_id")[["path", "mpp", "_line"]]


def _mpp(table: pd.DataFrame, what: str, path, key: str | None) -> pd.Series:
    """The mpp column as float (NaN where empty); also checked without jsonschema."""
    text = table["mpp"].str.strip()
    mpp = pd.to_numeric(text.where(text != ""), errors="coerce")
    bad = (text != "") & ~(mpp > 0) | mpp.isin([math.inf])
    if bad.any():
        raise InputError(
            f"{_source(what, path, key)}: column mpp is not a number > 0 on {_rows(table, bad)}; give the "
            "micrometres per pixel at level 0 (e.g. 0.25) or leave the cell empty"
        )
    return mpp.astype(float)


def load_slide_table(
    clinical: str | Path,
    slides_dir: str | Path | None = None,
    table: str | Path | None = None,
    produced_dir: str | None = None,
    prefix: str = "",
) -> pd.DataFrame:
    """One row per slide, indexed by slide key: slide_id, key, case_id, path, mpp, source, produced, exists.

    ``path`` is the slide table's path, else ``<slides_dir>/<slide_id>``; ``source`` says which
    (the config key). ``produced``: the path lies in ``produced_dir`` (made by a rule, the demo
    slides); ``exists``: produced or a file on disk (paths relative to the working directory).
    ``prefix``: where the cohort's keys are in the config ("cohorts.<name>." or ""), for messages.
    """
    ids = read_clinical_ids(clinical, key=f"{prefix}clinical")
    slides = ids[["slide_id", "case_id"]].copy()
    slides["path"] = ""
    slides["mpp"] = math.nan
    if table:
        overrides = read_slide_overrides(table, slides["slide_id"], key=f"{prefix}slides.table")
        slides["path"] = slides["slide_id"].map(overrides["path"]).fillna("")
        slides["mpp"] = slides["slide_id"].map(overrides["mpp"]).astype(float)
    slides["source"] = (slides["path"] != "").map({True: f"{prefix}slides.table", False: f"{prefix}slides.dir"})
    from_dir = slides["path"] == ""
    if from_dir.any():
        if not slides_dir:
            raise InputError(
                f"config key {prefix}slides.dir is empty and no slide table path is given for slide(s) "
                f"{listed(slides.loc[from_dir, 'slide_id'])}: set {prefix}slides.dir to the folder of the slide files "
                f"(named by the clinical table's slide_id), or give their paths in the slide table ({prefix}slides.table)"
            )
        slides.loc[from_dir, "path"] = [str(Path(slides_dir) / s) for s in slides.loc[from_dir, "slide_id"]]
    slides["key"] = slides["slide_id"].map(slide_key)
    produced = Path(produced_dir).as_posix() if produced_dir else None
    slides["produced"] = [Path(p).parent.as_posix() == produced for p in slides["path"]]
    slides["exists"] = [made or Path(p).expanduser().is_file() for made, p in zip(slides["produced"], slides["path"])]
    columns = ["slide_id", "key", "case_id", "path", "mpp", "source", "produced", "exists"]
    return slides[columns].set_index("key", drop=False)


def find_external_features(folder: str | Path | None, keys: Iterable[str]) -> dict[str, str]:
    """key -> existing CLAM/TRIDENT feature file in ``folder`` (features.external_dir), for the keys that have one."""
    if not folder:
        return {}
    found = {key: external_features.find_external_features(folder, key) for key in keys}
    return {key: str(path) for key, path in found.items() if path is not None}


def check_some_slide_on_disk(
    slides: pd.DataFrame, external: Mapping | None, clinical, slides_dir=None, table=None, prefix: str = ""
) -> None:
    """Stop when no slide of the clinical table is on disk (nor has external features): a wrong folder."""
    if len(slides) == 0 or slides["exists"].any() or external:
        return
    hints = []
    for source, rows in slides.groupby("source", sort=False):
        examples = listed(rows["path"], 3)
        if source.endswith("slides.dir"):
            hints.append(
                f"{len(rows)} path(s) <slides.dir>/<slide_id> with config key {source} = {str(slides_dir)!r} "
                f"(e.g. {examples}): set {source} to the folder holding the slide files"
            )
        else:
            hints.append(
                f"{len(rows)} path(s) from the path column of the slide table {table} (config key {source}; "
                f"e.g. {examples}): fix those paths"
            )
    raise InputError(
        f"none of the {len(slides)} slide(s) of the clinical table {clinical} is on disk: {'; '.join(hints)}. "
        f"Relative paths are read from the folder snakemake runs in ({Path.cwd()})"
    )


def absent_slides_warning(slides: pd.DataFrame, absent: pd.DataFrame, k: int, clinical, prefix: str = "") -> str:
    """What to tell the user about slides of the clinical table that are not on disk ("" when none is).

    Raises InputError when fewer patients than ``k`` folds keep a slide (or external features).
    """
    if not len(absent):
        return ""
    usable = set(slides.loc[~slides.index.isin(absent.index), "case_id"])
    patients = slides["case_id"].nunique()
    message = (
        f"{len(absent)} slide(s) of the clinical table are not on disk and are reported as missing: "
        f"{listed(absent['path'].astype(str), 5)}. {patients - len(usable)} of {patients} patients have "
        f"no slide on disk; {len(usable)} remain for the folds"
    )
    if len(usable) < int(k):
        raise InputError(
            f"only {len(usable)} patient(s) of {clinical} have a slide on disk, fewer than "
            f"splits.k = {k} folds: check {prefix}slides.dir / {prefix}slides.table, or lower splits.k ({message})"
        )
    return message


def cohort_slide_set(cohort, *, encoder: str, slides_per_job: int, external_dir=None, produced_dir=None):
    """(SlideSet, warning) of one cohort (``cohort_config.CohortConfig``): its slides to tile and featurise.

    Slides with bring-your-own features in ``external_dir`` are imported instead of tiled; slides not
    on disk are left out, and the warning (or "") says which. A cohort without slides has an empty
    SlideSet. Raises InputError for a table mistake, or when no slide (or too few patients) is on disk.
    """
    from ghanet_workflow.slide_set import SlideSet

    prefix = f"{cohort.key}." if cohort.key else ""
    if not cohort.has_slides:  # its table is still checked now, not in its first job
        read_clinical_ids(cohort.clinical, key=f"{prefix}clinical")
        return SlideSet({}, [], cohort.results, encoder, slides_per_job), ""
    slides = load_slide_table(cohort.clinical, cohort.slides_dir, cohort.slides_table, produced_dir, prefix)
    external = find_external_features(external_dir, slides.index)
    check_some_slide_on_disk(slides, external, cohort.clinical, cohort.slides_dir, cohort.slides_table, prefix)
    imported = slides.index.isin(list(external))
    tiled, absent = slides[slides["exists"] & ~imported], slides[~slides["exists"] & ~imported]
    warning = absent_slides_warning(slides, absent, cohort.splits["k"], cohort.clinical, prefix)
    # slide key -> row as a plain dict: the per-job input functions run for every slide job (10,000
    # slides: tens of thousands of calls in a dry run), where a dict lookup beats DataFrame.loc
    rows = slides.to_dict("index")
    return SlideSet(rows, tiled.index, cohort.results, encoder, slides_per_job, external), warning


# ----------------------------------------------------------------------------- new slides to predict


def read_predict_slides(path: str | Path, key: str | None = "predict.slides") -> pd.DataFrame:
    """The table of new slides: case_id, slide_id and optionally path, mpp, features_path (all text).

    Shared by the workflow (when it starts) and ``ghanet-wf predict`` (:func:`predict.read_slide_table`).
    """
    what = "predict slide table"
    table = read_delimited(path, what, key)
    missing = sorted({"case_id", "slide_id"} - set(table.columns))
    if missing:
        raise InputError(
            f"{path}: missing column(s) {missing}; the table needs case_id, slide_id (and path, optional mpp)"
            + (f" (config key {key})" if key else "")
        )
    _strip_ids(table, ["case_id", "slide_id"], what, path, key)
    check_rows(table, PREDICT_SCHEMA, what, path, key)
    if "mpp" in table:
        _mpp(table, what, path, key)
    duplicated = table.loc[table["slide_id"].map(slide_key).duplicated(), "slide_id"]
    if len(duplicated):
        raise InputError(
            f"{path}: slide_id(s) {duplicated.tolist()[:MAX_LISTED]} listed twice (or equal without extension) "
            f"on {_rows(table, table['slide_id'].map(slide_key).isin(set(duplicated.map(slide_key))))}; list each slide once"
        )
    return table.drop(columns="_line").reset_index(drop=True)


def load_predict_slides(path: str | Path | None, key: str = "predict.slides") -> pd.DataFrame:
    """New slides to tile, indexed by slide key: case_id, slide_id, path, mpp (float), exists.

    No table (``predict.slides`` unset): no new slides.
    """
    if not path:
        return pd.DataFrame(columns=["case_id", "slide_id", "path", "mpp", "exists"])
    table = read_predict_slides(path, key)
    lines = pd.Series(range(2, len(table) + 2), index=table.index)
    no_path = (table["path"].str.strip() == "") if "path" in table else pd.Series(True, index=table.index)
    if no_path.any():
        rows = table.assign(_line=lines)
        raise InputError(
            f"{_source('predict slide table', path, key)}: every row needs a path (the slide file to tile); "
            f"empty or no path column on {_rows(rows, no_path)}"
        )
    table["path"] = table["path"].str.strip()
    mpp = table["mpp"].str.strip() if "mpp" in table else pd.Series("", index=table.index)
    table["mpp"] = pd.to_numeric(mpp.where(mpp != ""), errors="coerce").astype(float)
    table["exists"] = [Path(p).expanduser().is_file() for p in table["path"]]
    table.index = table["slide_id"].map(slide_key)
    return table[["case_id", "slide_id", "path", "mpp", "exists"]]


def check_some_predict_slide_on_disk(slides: pd.DataFrame, path, key: str = "predict.slides") -> None:
    """Stop when no new slide is on disk (a wrong folder, or paths relative to another folder)."""
    if len(slides) and not slides["exists"].any():
        raise InputError(
            f"none of the {len(slides)} slide file(s) of the {_source('predict slide table', path, key)} is on "
            f"disk (e.g. {listed(slides['path'], 3)}): fix the path column; relative paths are read from the "
            f"folder snakemake runs in ({Path.cwd()})"
        )


def fold_model_dirs(models_from: str | Path, model_name: str) -> list[Path]:
    """``<models_from>/models/<model>/fold_<k>`` folders holding a model.pt, in fold order."""
    root = Path(models_from) / "models" / model_name
    folders = [p.parent for p in root.glob("fold_*/model.pt") if re.fullmatch(r"fold_\d+", p.parent.name)]
    if not folders:
        raise InputError(
            f"no trained fold model {root}/fold_<k>/model.pt; train the cohort first (snakemake) or "
            f"set predict.models_from to the results folder of a trained cohort and predict.model to a trained model"
        )
    return sorted(folders, key=lambda folder: int(folder.name.split("_")[1]))


# ----------------------------------------------------------------------------- config


def _dotted(parts: Iterable) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def config_error_message(error: BaseException, sources: Sequence = (), schema_path: Path = CONFIG_SCHEMA) -> str:
    """One readable line for a config that fails the schema (the jsonschema error inside ``error``).

    Names the config key, its value, what is wrong and what the key means; ``sources`` are the
    config files read.
    """
    from jsonschema.exceptions import ValidationError

    inner, seen = error, set()
    while inner is not None and not isinstance(inner, ValidationError) and id(inner) not in seen:
        seen.add(id(inner))  # Snakemake's validate() raises WorkflowError while handling the ValidationError
        inner = inner.__cause__ or inner.__context__
    files = f"config file(s): {', '.join(map(str, sources))}; " if sources else ""
    readme = f"{files}every key is explained in config/README.md"
    if not isinstance(inner, ValidationError):
        return f"the config is not valid: {error}; {readme}"
    path = list(inner.absolute_path)
    if inner.validator == "required":
        missing = [key for key in inner.validator_value if key not in inner.instance]
        about = [inner.schema.get("properties", {}).get(key, {}).get("description", "") for key in missing]
        keys = "; ".join(f"config key {_dotted([*path, key])} is required: {text}" for key, text in zip(missing, about))
        return f"{keys} ({readme}; config/config.yaml is the demo's config)"
    if inner.validator == "additionalProperties":
        known = sorted(inner.schema.get("properties", {}))
        unknown = [key for key in inner.instance if key not in known]
        where = _dotted(path) or "the top level"
        return (
            f"unknown config key(s) {', '.join(_dotted([*path, key]) for key in unknown)}: {where} takes "
            f"{', '.join(known)}; check the spelling ({readme})"
        )
    description = inner.schema.get("description")
    about = f"; {_dotted(path)} is the {description}" if description else ""
    hint = ""
    if isinstance(inner.instance, str) and inner.validator == "type" and _looks_like_a_number(inner.instance):
        hint = (
            "; a value given inside a nested --config KEY='{...}' reaches Snakemake as text: put the "
            "setting in a YAML file and add it with --configfile config/config.yaml my_overlay.yaml"
        )
    return f"config key {_dotted(path) or '(top level)'} = {inner.instance!r}: {inner.message}{about}{hint} ({readme})"


def _looks_like_a_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text.strip().lower() in {"true", "false", "null"}
    return True
