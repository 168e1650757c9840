# Validate the clinical/genomic table, pool each patient's usable slides, then patient-level folds.


rule build_cohort:
    input:
        clinical=cohort_setting(lambda cohort: cohort.clinical),
        signatures=config["signatures"],
        manifests=cohort_slides("all_manifests"),
    output:
        patients=f"{RESULTS}/cohort/patients.csv",
        genomics=f"{RESULTS}/cohort/genomics.csv.gz",
        groups=f"{RESULTS}/cohort/groups.json",
        slides=f"{RESULTS}/cohort/slides.csv",
    log:
        f"{LOGS}/build_cohort.log",
    wildcard_constraints:
        cohort=SLIDE_COHORTS,
    conda:
        "../../envs/report.yaml"
    resources:
        **SMALL_JOB,
    params:
        features=cohort_slides("feature_files"),
        out_dir=parent_dir("patients"),
        options=cohort_options("filters"),
    shell:
        "exec python -m ghanet_workflow.cli cohort --clinical {input.clinical:q} --signatures {input.signatures:q}"
        " --features {params.features:q} --out-dir {params.out_dir:q}"
        " --options {params.options:q} > {log:q} 2>&1"


# The cohort's features packed once into one file (ghanet_workflow.feature_store, training.feature_store_dtype)
# that the training and interpretation jobs of every model x fold read a bag at a time, so their
# memory follows the largest bag, not the cohort. They check it too (a stat per slide file) and
# repack it under its lock when it is damaged or stale.
rule pack_features:
    input:
        patients=rules.build_cohort.output.patients,
        slides=rules.build_cohort.output.slides,
    output:
        index=f"{RESULTS}/cohort/feature_store/index.json",
    log:
        f"{LOGS}/pack_features.log",
    wildcard_constraints:
        cohort=SLIDE_COHORTS,
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=60,
        disk_mb=1000,
    params:
        cohort_dir=sibling_dir("slides"),
        dtype=config["training"]["feature_store_dtype"],
    shell:
        "exec python -m ghanet_workflow.cli pack-features --cohort-dir {params.cohort_dir:q} --dtype {params.dtype:q}"
        " > {log:q} 2>&1"


# The cohort table of an encoder other than the default (features.encoders.<label>): the same
# slides with that encoder's features, in results/<cohort>/cohort@<label>/; its models
# (<model>@<label>) train on the cohort's one set of splits, so every encoder is compared on the
# same test patients. The default encoder's table stays results/<cohort>/cohort/.
use rule build_cohort as build_encoder_cohort with:
    output:
        patients=f"{RESULTS}/cohort@{{encoder}}/patients.csv",
        genomics=f"{RESULTS}/cohort@{{encoder}}/genomics.csv.gz",
        groups=f"{RESULTS}/cohort@{{encoder}}/groups.json",
        slides=f"{RESULTS}/cohort@{{encoder}}/slides.csv",
    log:
        f"{LOGS}/build_cohort@{{encoder}}.log",


use rule pack_features as pack_encoder_features with:
    input:
        patients=rules.build_encoder_cohort.output.patients,
        slides=rules.build_encoder_cohort.output.slides,
    output:
        index=f"{RESULTS}/cohort@{{encoder}}/feature_store/index.json",
    log:
        f"{LOGS}/pack_features@{{encoder}}.log",


# A cohort without slides (cohorts.<name>.slides empty): every patient of the table, no slide.
rule build_genomic_cohort:
    input:
        clinical=cohort_setting(lambda cohort: cohort.clinical),
        signatures=config["signatures"],
    output:
        **rules.build_cohort.output,
    log:
        f"{LOGS}/build_cohort.log",
    wildcard_constraints:
        cohort=GENOMIC_COHORTS,
    conda:
        "../../envs/report.yaml"
    resources:
        **SMALL_JOB,
    params:
        out_dir=parent_dir("patients"),
        options=cohort_options("filters"),
    shell:
        "exec python -m ghanet_workflow.cli cohort --clinical {input.clinical:q} --signatures {input.signatures:q}"
        " --genomic-only --out-dir {params.out_dir:q}"
        " --options {params.options:q} > {log:q} 2>&1"


rule make_splits:
    input:
        patients=rules.build_cohort.output.patients,
    output:
        expand(f"{RESULTS}/splits/fold_{{fold}}.csv", fold=FOLDS, allow_missing=True),
    log:
        f"{LOGS}/make_splits.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **SMALL_JOB,
    params:
        out_dir=parent_dir(0),
        options=cohort_options("splits"),
    shell:
        "exec python -m ghanet_workflow.cli splits --patients {input.patients:q} --out-dir {params.out_dir:q}"
        " --options {params.options:q} > {log:q} 2>&1"
