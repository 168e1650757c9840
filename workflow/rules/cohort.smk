# Validate the clinical/genomic table, pool each patient's usable slides, then patient-level folds.


rule build_cohort:
    input:
        clinical=config["clinical"],
        signatures=config["signatures"],
        manifests=feature_manifests,
    output:
        patients=f"{RESULTS}/cohort/patients.csv",
        genomics=f"{RESULTS}/cohort/genomics.csv.gz",
        groups=f"{RESULTS}/cohort/groups.json",
        slides=f"{RESULTS}/cohort/slides.csv",
    log:
        f"{LOGS}/build_cohort.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **SMALL_JOB,
    params:
        features=feature_files(),
        out_dir=parent_dir("patients"),
        options=json.dumps({"filters": config["filters"]}),
    shell:
        "exec python -m ghanet_workflow.cli cohort --clinical {input.clinical:q} --signatures {input.signatures:q}"
        " --features {params.features:q} --out-dir {params.out_dir:q}"
        " --options {params.options:q} > {log:q} 2>&1"


rule make_splits:
    input:
        patients=rules.build_cohort.output.patients,
    output:
        expand(f"{RESULTS}/splits/fold_{{fold}}.csv", fold=FOLDS),
    log:
        f"{LOGS}/make_splits.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **SMALL_JOB,
    params:
        out_dir=parent_dir(0),
        options=options("splits"),
    shell:
        "exec python -m ghanet_workflow.cli splits --patients {input.patients:q} --out-dir {params.out_dir:q}"
        " --options {params.options:q} > {log:q} 2>&1"
