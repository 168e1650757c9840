"""The config schema, the modules' DEFAULTS and config/README.md must agree key for key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ghanet_workflow import demo, features, metrics, predict, preprocess, splits, tiling, train
from ghanet_workflow.report import options as report_options

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
SECTIONS = {
    "demo": demo.DEFAULTS,
    "tiling": tiling.DEFAULTS,
    "features": features.DEFAULTS,
    "splits": splits.DEFAULTS,
    "genomics": preprocess.DEFAULTS,
    "training": train.DEFAULTS,
    "evaluation": metrics.DEFAULTS,
    "report": report_options.DEFAULTS,
    "predict": predict.DEFAULTS,
}


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_schema_section_matches_module_defaults(section):
    properties = SCHEMA["properties"][section]["properties"]
    assert set(properties) == set(SECTIONS[section])
    for key, value in SECTIONS[section].items():
        assert properties[key].get("default") == value, f"{section}.{key}: schema default differs from the module's"
        assert properties[key].get("description"), f"{section}.{key} has no description in the schema"


def test_every_config_key_is_documented():
    readme = (REPO / "config" / "README.md").read_text()
    for key in SCHEMA["properties"]:
        assert f"`{key}`" in readme, f"config key {key} is not explained in config/README.md"
    for section, defaults in SECTIONS.items():
        for key in defaults:
            assert f"`{section}.{key}`" in readme, f"{section}.{key} is not explained in config/README.md"


def test_default_config_validates():
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    assert config["features"]["slides_per_job"] == features.DEFAULTS["slides_per_job"] or "slides_per_job" in config["features"]
