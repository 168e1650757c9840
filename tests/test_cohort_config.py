"""The cohorts of a run, from the config (ghanet_workflow.cohort_config)."""

from __future__ import annotations

import pytest

from ghanet_workflow import cohort_config, model
from ghanet_workflow.cohort_config import check_reference_model, run_cohorts
from ghanet_workflow.errors import InputError

SHARED = {"training": {"models": ["ghanet", "snn"]}, "splits": {"k": 5, "seed": 1, "published_dir": None}, "filters": {}}
DEMO = {"clinical": "data/demo/tcga_blca_demo.csv", "slides": {"dir": "data/slides"}}
UCEC = {"clinical": "data/tcga/tcga_ucec_all_clean.csv.zip", "splits": {"published_dir": "data/tcga/splits/tcga_ucec"}}


def test_the_light_model_lists_agree_with_the_model_registry():
    without_slides = {name for name, cls in model.MODELS.items() if not cls.uses_slides}
    assert without_slides == set(cohort_config.MODELS_WITHOUT_SLIDES)
    assert set(cohort_config.CPU_MODELS) == set(model.MODELS) - set(model.NETWORKS)


def test_the_single_cohort_form_is_one_cohort_with_the_shared_settings():
    config = {**SHARED, "cohort": "demo_blca", "clinical": DEMO["clinical"], "slides": {"dir": "data/slides", "table": None}}
    (cohort,) = run_cohorts(config).values()
    assert (cohort.name, cohort.results, cohort.logs) == ("demo_blca", "results/demo_blca", "logs/demo_blca")
    assert cohort.models == ("ghanet", "snn") and cohort.has_slides and cohort.splits == SHARED["splits"]
    assert cohort.config_key("slides.dir") == "slides.dir"  # messages name the keys the user wrote


def test_cohorts_keep_their_order_own_splits_and_filters():
    config = {**SHARED, "cohorts": {"demo_blca": {**DEMO, "filters": {"oncotree_code": ["BLCA"]}}, "tcga_ucec": UCEC}}
    cohorts = run_cohorts(config)
    assert list(cohorts) == ["demo_blca", "tcga_ucec"]
    demo, ucec = cohorts.values()
    assert demo.filters == {"oncotree_code": ["BLCA"]} and ucec.filters == {}
    assert ucec.splits == {"k": 5, "seed": 1, "published_dir": "data/tcga/splits/tcga_ucec"}
    assert demo.splits["published_dir"] is None
    # a cohort without slides trains the shared models that need none
    assert not ucec.has_slides and ucec.models == ("snn",) and demo.models == ("ghanet", "snn")
    assert ucec.config_key("models") == "cohorts.tcga_ucec.models"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"cohorts": {"tcga_ucec": {**UCEC, "models": ["ghanet", "coxnet"]}}},
         r"cohorts.tcga_ucec.models: \['ghanet'\] need slides, and cohort 'tcga_ucec' has none"),
        ({"training": {"models": ["ghanet", "abmil"]}, "cohorts": {"tcga_ucec": UCEC}},
         r"cohort 'tcga_ucec' has no slides .* give it models \(cohorts.tcga_ucec.models\) from \['snn', 'coxnet'\]"),
        ({"cohort": "demo", "cohorts": {"demo": DEMO}}, "config keys cohort and cohorts are both set"),
        ({"clinical": "x.csv"}, "config key cohort is required"),
        ({"cohort": "demo", "clinical": "x.csv"}, r"config key slides.dir is empty .* training.models is \['ghanet', 'snn'\]"),
        ({"cohorts": {"report": DEMO}}, "cohort name 'report' cannot name a results folder"),
        ({"cohorts": {"demo": {"slides": {"dir": "data/slides"}}}}, "config key cohorts.demo.clinical is missing"),
    ],
)
def test_config_mistakes_name_the_key(config, message):
    with pytest.raises(InputError, match=message):
        run_cohorts({**SHARED, **config})


def test_the_reference_model_must_be_trained_in_some_compared_cohort():
    cohorts = run_cohorts({**SHARED, "cohorts": {"demo_blca": DEMO, "tcga_ucec": {**UCEC, "models": ["snn", "coxnet"]}}})
    check_reference_model(cohorts, "ghanet")  # tcga_ucec is left out of the comparison, and named there
    with pytest.raises(InputError, match="report.reference_model: 'abmil' is not trained in any cohort"):
        check_reference_model(cohorts, "abmil")


def test_a_genomic_only_cohorts_table_is_checked_when_the_workflow_starts(tmp_path):
    from ghanet_workflow.slide_table import cohort_slide_set

    bad = tmp_path / "ucec.csv"
    bad.write_text("case_id;slide_id;survival_months;censorship\nA;A.svs;3;0\n")  # semicolons, not MCAT
    cohorts = run_cohorts({**SHARED, "cohorts": {"tcga_ucec": {**UCEC, "clinical": str(bad)}}})
    with pytest.raises(InputError, match=r"cohorts.tcga_ucec.clinical.*semicolon-separated"):
        cohort_slide_set(cohorts["tcga_ucec"], encoder="efficientnet_lite0", slides_per_job=16)
    slides, warning = cohort_slide_set(run_cohorts({**SHARED, "cohorts": {"tcga_ucec": UCEC}})["tcga_ucec"],
                                       encoder="efficientnet_lite0", slides_per_job=16)
    assert slides.feature_files() == [] and warning == ""  # the real table: nothing to tile


FEATURES = {"encoder": "efficientnet_lite0", "weights": None, "weights_sha256": None, "external_dir": None}


def encoders_config(encoders: dict, **extra) -> dict:
    return {**SHARED, "features": {**FEATURES, "encoders": encoders}, **extra}


def test_each_extra_encoder_trains_the_slide_models_under_model_labels():
    config = encoders_config(
        {"rn50": {"encoder": "resnet50_trunc", "weights": "w.pth"}, "uni": {"encoder": "uni2_h", "models": ["ghanet"]}},
        training={"models": ["ghanet", "abmil", "snn"]},
        cohorts={"demo_blca": DEMO, "tcga_ucec": UCEC},
    )
    encoders = cohort_config.run_encoders(config)
    assert list(encoders) == ["efficientnet_lite0", "rn50", "uni"]  # the default first, by its registry name
    assert encoders["rn50"].feature_options() == {"encoder": "resnet50_trunc", "weights": "w.pth", "weights_sha256": None}
    demo, ucec = run_cohorts(config, encoders).values()
    # the default encoder's models keep their names (a finished run's folders stay theirs)
    assert demo.models == ("ghanet", "abmil", "snn", "ghanet@rn50", "abmil@rn50", "ghanet@uni")
    assert demo.encoders == ("rn50", "uni")
    assert ucec.models == ("snn",) and ucec.encoders == ()  # no slides: no encoder
    assert cohort_config.split_model_label("abmil@rn50") == ("abmil", "rn50")
    assert cohort_config.split_model_label("snn") == ("snn", None)
    # one encoder: the same cohorts as without encoders
    single = {**config, "features": FEATURES}
    assert run_cohorts(single, cohort_config.run_encoders(single)) == run_cohorts(single)


@pytest.mark.parametrize(
    ("encoders", "extra", "message"),
    [
        ({"efficientnet_lite0": {"encoder": "uni2_h"}}, {}, r"features.encoders.efficientnet_lite0: .* is the default encoder"),
        ({"uni": {"encoder": "uni2_h", "models": ["snn"]}}, {}, r"features.encoders.uni.models: \['snn'\] read no slide features"),
        ({"a/b": {"encoder": "uni2_h"}}, {}, r"features.encoders.a/b: encoder label 'a/b' cannot name a results folder"),
        ({"uni": {"encoder": "uni2_h"}}, {"external_dir": "clam"}, "features.encoders and features.external_dir are both set"),
    ],
)
def test_encoder_mistakes_name_the_key(encoders, extra, message):
    config = encoders_config(encoders)
    config["features"].update(extra)
    with pytest.raises(InputError, match=message):
        cohort_config.run_encoders(config)
