"""Per-slide files checked, not trusted: which finished coords/features files changed since they were made.

Snakemake knows a finished per-slide file only by its existence and time stamp. Each feature
chunk job therefore writes a manifest (ghanet_workflow.features.write_manifest) naming every
per-slide features and coords file it used or made, with its size in bytes. At the next DAG
parse :func:`damaged_files` compares those sizes with the files on disk (one ``stat`` per file:
10,000 slides cost a fraction of a second), and the workflow makes Snakemake redo exactly what
is damaged, through a marker file per damage (:func:`redo_marker`) in the job's inputs: a
deleted or truncated features file reruns its chunk (which recomputes only the slides whose
output is not complete), a truncated coords file reruns that slide's tiling. Standard library
only: this runs while the DAG is parsed.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable


@dataclass(frozen=True)
class Damage:
    """One per-slide file that no longer is what its chunk job recorded."""

    path: str  #: the per-slide file
    kind: str  #: "features" or "coords"
    manifest: str  #: the chunk manifest that recorded it
    reason: str  #: "deleted" or "size changed from X to Y bytes"


def _state(path: str, recorded: str) -> str | None:
    """Why ``path`` differs from its recorded size (None when it matches or nothing was recorded)."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return "deleted"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if recorded and recorded.isdigit() and int(recorded) != size:
        return f"size changed from {recorded} to {size} bytes"
    return None


def damaged_files(manifests: Iterable[str | Path]) -> list[Damage]:
    """Every per-slide file listed in the existing ``manifests`` that was deleted or changed size.

    A manifest that does not exist yet (the chunk has not run) or has no size columns (written
    by an older version) is skipped: there is nothing recorded to compare with.
    """
    found = []
    for manifest in map(str, manifests):
        try:
            with open(manifest, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle, delimiter="\t"))
        except (FileNotFoundError, UnicodeDecodeError, csv.Error):
            continue
        for row in rows:
            for kind in ("features", "coords"):
                path = row.get(f"{kind}_path") or ""
                if not path:
                    continue
                reason = _state(path, row.get(f"{kind}_bytes") or "")
                if reason:
                    found.append(Damage(path, kind, manifest, reason))
    return found


#: ``<per-slide target>.redo-<digest>``: the record that a target's file was damaged and is redone
MARKER_INFIX = ".redo-"


def redo_marker(target: str, damages: Iterable[Damage]) -> tuple[str, str]:
    """(path, text) of the marker that makes ``target``'s job run again for these damages.

    The workflow adds every marker of a target to that job's inputs; a new marker (a file not
    there yet, made by a one-line job) makes Snakemake rerun the job, and once it exists the input
    set stays the same, so the repaired target is not redone again on the next run. The digest
    depends on what was damaged, so a later, different damage gets a new marker.
    """
    damages = list(damages)
    text = "\n".join(f"{d.path}: {d.reason} (recorded in {d.manifest})" for d in damages)
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    return f"{target}{MARKER_INFIX}{digest}", text


def existing_markers(folders: Iterable[str | Path]) -> dict[str, list[str]]:
    """target -> its marker files already on disk, from one listing of each folder."""
    found: dict[str, list[str]] = {}
    for folder in map(Path, folders):
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            continue
        for name in sorted(names):
            if MARKER_INFIX in name:
                target = name.rsplit(MARKER_INFIX, 1)[0]
                found.setdefault(str(folder / target), []).append(str(folder / name))
    return found
