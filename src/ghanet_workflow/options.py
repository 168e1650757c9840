"""The ``--options`` argument every stage takes: a config section as JSON text or a JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

from ghanet_workflow.errors import InputError


def parse_options(
    text: str | Sequence[str] | None, defaults: Mapping | None = None, what: str = "options"
) -> dict:
    """Parse ``--options`` (JSON object text, or the path of a JSON file holding one).

    Several texts (``--options A B``) are merged in order, sections one level deep: the workflow
    passes what changes a job's outputs (the rule's params) and the settings that only change how
    it runs (batch size, workers, device: kept out of params so that changing them reruns
    nothing) as two objects. With ``defaults``, unknown keys are rejected (a typo in the config
    must not be silently ignored) and the result is ``defaults`` updated with the given keys.
    """
    if text is not None and not isinstance(text, str):
        merged: dict = {}
        for part in text:
            for key, value in parse_options(part, None, what).items():
                both_dicts = isinstance(value, dict) and isinstance(merged.get(key), dict)
                merged[key] = {**merged[key], **value} if both_dicts else value
        return parse_options(json.dumps(merged), defaults, what)
    given: dict = {}
    if text:
        source = text if text.lstrip().startswith("{") else _read_file(text, what)
        try:
            given = json.loads(source) or {}
        except json.JSONDecodeError as exc:
            raise InputError(f"{what}: --options is not valid JSON ({exc}): {text[:200]!r}") from exc
        if not isinstance(given, dict):
            raise InputError(f"{what}: --options must be a JSON object, got {type(given).__name__}")
    if defaults is None:
        return given
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise InputError(f"{what}: unknown option(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **given}


def _read_file(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{what}: --options is neither a JSON object nor a readable JSON file: {exc}") from exc
