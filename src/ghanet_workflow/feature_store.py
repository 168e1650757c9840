"""Per-cohort feature store: every patient's bag packed once into one contiguous file.

Training and interpretation jobs (one per model x fold) read their bags from here instead of
holding the whole cohort in memory: a bag is read from disk when a step needs it, so a job's peak
memory is bounded by its largest bag (plus the model), not by the cohort, and the jobs of one node
share the operating system's page cache of the one file.

Layout (``<cohort dir>/feature_store/``, derived from the per-slide feature HDF5 files that the
cohort's ``slides.csv`` lists for its usable slides):

* ``features-<build id>.<dtype>``: a raw row-major ``(rows, dim)`` array, the patients one after
  the other (each patient's slides in ``slides.csv`` order, as :func:`ghanet_workflow.fold.read_bag`
  concatenates them); ``float32`` (default) or ``float16`` (config ``training.feature_store_dtype``);
* ``index.json``: dtype, dim, the data file's name, size and mtime, and per patient its row offset,
  row count and source files (path, size, mtime in ns).

:func:`ensure_store` (``ghanet-wf pack-features`` and every reader) checks the index against the
data file and the per-slide files (a stat each, no read) and repacks under a lock when the store is
missing, damaged (unreadable index, data file absent, truncated or modified after packing) or
stale (a source file changed or the cohort's slides changed). The data file of a repack gets a new
name and the index is replaced last, atomically, so a job still reading the previous store keeps
its open file. Reads use ``pread`` (not a memory map): the rows a step takes are copied into the
process, the file's pages stay in the shared page cache and do not count in the job's RSS.
Light at import (numpy and the standard library): torch and h5py are imported where used.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .atomic import atomic_path, write_json
from .errors import InputError

log = logging.getLogger(__name__)

STORE_DIRNAME = "feature_store"
INDEX_NAME = "index.json"
FORMAT = 1
DTYPES = ("float32", "float16")
DEFAULT_DTYPE = "float32"
#: a sparse read (rows listed one run at a time) when a step takes fewer than 1/SPARSE of the bag's rows
SPARSE = 4


def store_dir(cohort_dir: str | Path) -> Path:
    """Where the store of a built cohort lives."""
    return Path(cohort_dir) / STORE_DIRNAME


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise InputError(f"config training.feature_store_dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return dtype


def source_record(path: str) -> dict:
    """Path, size and mtime (ns) of one per-slide feature file (what staleness is checked against)."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise InputError(f"feature file {path} of the cohort cannot be read ({exc}); rerun the features stage") from exc
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cohort_sources(cohort) -> dict[str, list[str]]:
    """case_id -> the feature files of its usable slides (slides.csv order), every patient of the cohort."""
    return {case_id: cohort.feature_paths(case_id) for case_id in cohort.patients.index}


# ----------------------------------------------------------------------------- validation


def read_index(directory: str | Path) -> dict | None:
    """The parsed index.json, or None when it is absent or unreadable."""
    try:
        return json.loads((Path(directory) / INDEX_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def store_problem(directory: str | Path, index: dict | None, sources: Mapping[str, Sequence[str]], dtype: str | None) -> str | None:
    """Why the store cannot be used for ``sources`` (and ``dtype`` unless None), or None when it can."""
    if index is None:
        return "no readable index.json"
    try:
        if index.get("format") != FORMAT:
            return f"index format {index.get('format')!r}, expected {FORMAT}"
        if dtype is not None and index["dtype"] != dtype:
            return f"packed as {index['dtype']}, {dtype} requested"
        data = Path(directory) / index["data_file"]
        if not data.is_file():
            return f"data file {data.name} is missing"
        stat = data.stat()
        expected = int(index["rows"]) * int(index["dim"]) * np.dtype(index["dtype"]).itemsize
        if stat.st_size != expected or stat.st_size != index["data_size"]:
            return f"data file {data.name} has {stat.st_size} bytes, expected {expected} (truncated or damaged)"
        if stat.st_mtime_ns != index["data_mtime_ns"]:
            return f"data file {data.name} was modified after packing"
        cases = index["cases"]
        if set(cases) != set(sources):
            return "the cohort's patients changed"
        for case_id, paths in sources.items():
            recorded = cases[case_id]["sources"]
            if [r["path"] for r in recorded] != [str(p) for p in paths]:
                return f"patient {case_id}: its slides changed"
            for record in recorded:
                try:
                    current = os.stat(record["path"])
                except OSError:
                    return f"source {record['path']} is gone"
                if (current.st_size, current.st_mtime_ns) != (record["size"], record["mtime_ns"]):
                    return f"source {record['path']} changed since packing"
    except (KeyError, TypeError, ValueError) as exc:
        return f"index.json is damaged ({exc!r})"
    return None


# ----------------------------------------------------------------------------- packing


def read_slide(path: str, case_id: str) -> np.ndarray:
    """The ``features`` dataset of one slide file (its stored dtype)."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            array = handle["features"][()]
    except (OSError, KeyError) as exc:
        raise InputError(
            f"cannot read dataset 'features' of {path} (patient {case_id}): {exc}; rerun the features stage for this slide"
        ) from exc
    if array.ndim != 2:
        raise InputError(f"{path} (patient {case_id}): 'features' has shape {array.shape}, expected N x D")
    return array


def pack(directory: str | Path, sources: Mapping[str, Sequence[str]], dtype: str = DEFAULT_DTYPE) -> dict:
    """Write a new store of ``sources`` (case_id -> feature files) into ``directory``; returns its index.

    One slide in memory at a time. Patients without a usable slide get no rows (reading their bag
    raises the InputError of :func:`ghanet_workflow.fold.read_bag`).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    check_dtype(dtype)
    data_name = f"features-{uuid.uuid4().hex[:12]}.{'f16' if dtype == 'float16' else 'f32'}"
    cases, offset, dim = {}, 0, None
    with atomic_path(directory / data_name) as tmp, open(tmp, "wb") as out:
        for case_id, paths in sources.items():
            records, rows = [], 0
            for path in paths:
                record = source_record(path)  # stat before the read: a later change shows as stale
                array = read_slide(path, case_id)
                if dim is None:
                    dim = array.shape[1]
                if array.shape[1] != dim:
                    raise InputError(
                        f"patient {case_id}: {path} has {array.shape[1]}-d features, other slides of the cohort "
                        f"{dim}-d; extract all slides with the same encoder"
                    )
                packed = np.ascontiguousarray(array, dtype=dtype)
                if dtype == "float16" and not np.isfinite(packed).all() and np.isfinite(array).all():
                    raise InputError(
                        f"{path}: features exceed the float16 range; set training.feature_store_dtype: float32"
                    )
                out.write(packed.tobytes())
                rows += array.shape[0]
                records.append(record)
            cases[case_id] = {"offset": offset, "rows": rows, "sources": records}
            offset += rows
        out.flush()
        os.fsync(out.fileno())
    stat = (directory / data_name).stat()
    index = {
        "format": FORMAT,
        "dtype": dtype,
        "dim": int(dim or 0),
        "rows": offset,
        "largest_bag": max((c["rows"] for c in cases.values()), default=0),
        "data_file": data_name,
        "data_size": stat.st_size,
        "data_mtime_ns": stat.st_mtime_ns,
        "cases": cases,
    }
    previous = read_index(directory)
    write_json(directory / INDEX_NAME, index)
    for stale in directory.glob("features-*"):  # readers that hold a previous file keep it (POSIX unlink)
        if stale.name != data_name and not stale.name.startswith(".tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
    if previous is not None:
        log.info("replaced the feature store of %s", directory)
    return index


@contextlib.contextmanager
def store_lock(directory: Path):
    """An exclusive lock on the store (one job checks or packs at a time; the others wait)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_store(cohort, directory: str | Path, dtype: str | None = None) -> dict:
    """The index of a store in ``directory`` that matches ``cohort`` (packed now if missing, damaged or stale).

    ``dtype`` None accepts the store's dtype (readers that do not train); a store of another dtype
    is repacked with ``dtype``.
    """
    directory = Path(directory)
    with store_lock(directory):
        return _checked_index(directory, cohort_sources(cohort), dtype)


def _checked_index(directory: Path, sources: Mapping[str, Sequence[str]], dtype: str | None) -> dict:
    """:func:`ensure_store` inside the lock."""
    index = read_index(directory)
    problem = store_problem(directory, index, sources, dtype)
    if problem is None:
        return index
    if index is not None:
        log.warning("feature store %s: %s; repacking", directory, problem)
    else:
        log.info("packing the feature store %s", directory)
    return pack(directory, sources, dtype or (index or {}).get("dtype") or DEFAULT_DTYPE)


# ----------------------------------------------------------------------------- reading


class FeatureStore:
    """An open store: the index and one file descriptor of its data file."""

    def __init__(self, directory: str | Path, index: dict):
        self.directory = Path(directory)
        self.index = index
        self.dtype = np.dtype(index["dtype"])
        self.dim = int(index["dim"])
        self.fd = os.open(self.directory / index["data_file"], os.O_RDONLY)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def bag(self, case_id: str) -> "StoredBag":
        entry = self.index["cases"].get(case_id)
        if entry is None or not entry["sources"]:
            raise InputError(f"patient {case_id} has no usable slide; rebuild the cohort (slides.csv 'used')")
        return StoredBag(self, int(entry["offset"]), int(entry["rows"]))

    def bags(self, case_ids: Sequence[str]) -> dict[str, "StoredBag"]:
        return {case_id: self.bag(case_id) for case_id in case_ids}

    def read_rows(self, start: int, count: int) -> np.ndarray:
        """Rows ``start .. start+count`` of the data file, in the stored dtype."""
        out = np.empty((count, self.dim), dtype=self.dtype)
        view = memoryview(out).cast("B")
        position, done = start * self.dim * self.dtype.itemsize, 0
        while done < len(view):  # pread may return less than asked (about 2 GB at most per call on Linux)
            got = os.preadv(self.fd, [view[done:]], position + done)
            if got <= 0:
                raise InputError(f"feature store {self.directory} is truncated; delete it and rerun")
            done += got
        return out


class StoredBag:
    """One patient's bag in a :class:`FeatureStore`, read when used; stands in for the N x D tensor.

    What the training loop (:mod:`ghanet_workflow.train`) does with a bag works unchanged, so the
    sampling is exactly that of an in-memory bag (same generator draws): ``shape``, ``bag[index]``
    (the rows of an index tensor, e.g. ``torch.randperm(N)[:max_patches]``: only those rows are
    read when they are few) and ``bag.to(device)`` (the whole bag as float32). The largest bag a
    job can evaluate is bounded by memory only: N x D x (4 + stored itemsize) bytes for the read,
    plus the model's activations (linear in N).
    """

    def __init__(self, store: FeatureStore, offset: int, rows: int):
        self.store, self.offset, self.rows = store, offset, rows

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.store.dim)

    def load(self):
        """The whole bag as a float32 tensor."""
        import torch

        return torch.from_numpy(self.store.read_rows(self.offset, self.rows)).float()  # (torch casts float16 fastest)

    def to(self, device, non_blocking: bool = False):
        return self.load().to(device, non_blocking=non_blocking)

    def __getitem__(self, index):
        import torch

        rows = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64)
        if rows.ndim != 1 or len(rows) * SPARSE >= self.rows:  # the whole bag read, the rows taken, then cast
            return torch.from_numpy(self.store.read_rows(self.offset, self.rows))[index].float()
        wanted, inverse = np.unique(rows, return_inverse=True)
        breaks = np.flatnonzero(np.diff(wanted) != 1) + 1
        parts = [
            self.store.read_rows(self.offset + int(run[0]), len(run)) for run in np.split(wanted, breaks)
        ]
        return torch.from_numpy(np.concatenate(parts))[torch.from_numpy(inverse)].float()


#: share of the GPU's free memory that ``training.cohort_on_gpu: auto`` lets the bags take
GPU_SHARE = 0.5


def fits_on_device(need_bytes: int, free_bytes: int, share: float = GPU_SHARE) -> bool:
    """Whether bags of ``need_bytes`` leave the margin ``auto`` asks for on a device with ``free_bytes`` free."""
    return need_bytes <= share * free_bytes


def hold_on_device(bags: Mapping[str, "StoredBag"], device, setting: str) -> Mapping:
    """The training bags as float32 tensors on the GPU (``always``, or ``auto`` when they fit with
    :data:`GPU_SHARE` margin), read one at a time through the host; else ``bags`` unchanged (CPU,
    ``never``, or ``auto`` without room). Sampling is unchanged: the patch draws stay on the CPU
    generator and index the device tensor."""
    if setting == "never" or getattr(device, "type", str(device)) != "cuda":
        return bags
    import torch

    need = sum(4 * bag.shape[0] * bag.shape[1] for bag in bags.values())
    free, _ = torch.cuda.mem_get_info(device)
    if not fits_on_device(need, free):
        if setting == "always":
            raise InputError(
                f"training.cohort_on_gpu: always, but the bags take {need / 2**30:.1f} GiB and the GPU has "
                f"{free / 2**30:.1f} GiB free; use auto or never"
            )
        log.info("bags (%.1f GiB) do not fit in half of the GPU's %.1f GiB free: read from the store", need / 2**30, free / 2**30)
        return bags
    log.info("holding %d bags (%.1f GiB) on %s", len(bags), need / 2**30, device)
    return {case_id: bag.to(device) for case_id, bag in bags.items()}


def open_store(cohort, cohort_dir: str | Path, dtype: str | None = None) -> FeatureStore:
    """The cohort's store, checked (and repacked if needed) and opened for reading under the lock
    (a repack by another job cannot remove the data file between the check and the open)."""
    directory = store_dir(cohort_dir)
    with store_lock(directory):
        return FeatureStore(directory, _checked_index(directory, cohort_sources(cohort), dtype))


# ----------------------------------------------------------------------------- command line


def main(argv: list[str]) -> int:
    """``ghanet-wf pack-features --cohort-dir D [--dtype float32|float16]``."""
    from .cohort import load_built_cohort

    parser = argparse.ArgumentParser(prog="ghanet-wf pack-features", description=__doc__.splitlines()[0])
    parser.add_argument("--cohort-dir", required=True, help="folder written by the cohort stage")
    parser.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPES, help="stored dtype (config training.feature_store_dtype)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    index = ensure_store(load_built_cohort(args.cohort_dir), store_dir(args.cohort_dir), args.dtype)
    log.info(
        "%s: %d patients, %d rows x %d (%s), largest bag %d rows",
        store_dir(args.cohort_dir), len(index["cases"]), index["rows"], index["dim"], index["dtype"], index["largest_bag"],
    )
    return 0
