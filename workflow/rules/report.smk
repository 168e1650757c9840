# Aggregate every fold of every model into the report tables and figures. Runs in seconds on a
# CPU; every output is registered for `snakemake --report results/report.html`.


rule report:
    input:
        metrics=fold_outputs("metrics.json"),
        predictions=fold_outputs("predictions.csv"),
        training_logs=fold_outputs("training_log.csv"),
        slides=rules.build_cohort.output.slides,
        qc=tile_qc_files,
        qc_png=tile_qc_pngs,
    output:
        cindex_md=report(
            f"{RESULTS}/report/cindex.md",
            caption="../report/cindex.rst",
            category="Survival",
            labels={"table": "C-index per fold"},
        ),
        cindex_csv=f"{RESULTS}/report/cindex.csv",
        predictions=report(
            f"{RESULTS}/report/predictions.csv",
            caption="../report/predictions.rst",
            category="Survival",
            labels={"table": "out-of-fold predictions"},
        ),
        km=report(
            f"{RESULTS}/report/km.png",
            caption="../report/km.rst",
            category="Survival",
            labels={"figure": "Kaplan-Meier by predicted risk"},
        ),
        cindex_strip=report(
            f"{RESULTS}/report/cindex_strip.png",
            caption="../report/cindex_strip.rst",
            category="Survival",
            labels={"figure": "C-index per fold"},
        ),
        training_curves=report(
            f"{RESULTS}/report/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
            labels={"figure": "training curves"},
        ),
        failed_md=report(
            f"{RESULTS}/report/failed_slides.md",
            caption="../report/failed_slides.rst",
            category="Slides",
            labels={"table": "failed slides and QC"},
        ),
        failed_csv=f"{RESULTS}/report/failed_slides.csv",
        qc_sheet=report(
            f"{RESULTS}/report/qc_contact_sheet.png",
            caption="../report/qc_contact_sheet.rst",
            category="Slides",
            labels={"figure": "tiling QC contact sheet"},
        ),
    log:
        f"{LOGS}/report.log",
    conda:
        "../../envs/report.yaml"
    params:
        out_dir=parent_dir("cindex_md"),
        folds=FOLDS,
        cohort=COHORT,
        encoder=ENCODER,
        target_mpp=config["tiling"]["target_mpp"],
        options=options("report"),
    shell:
        "python -m ghanet_workflow.cli report --metrics {input.metrics:q} --predictions {input.predictions:q}"
        " --training-logs {input.training_logs:q} --slides {input.slides:q}"
        " --qc {input.qc:q} --qc-png {input.qc_png:q} --folds {params.folds}"
        " --cohort {params.cohort:q} --encoder {params.encoder:q} --target-mpp {params.target_mpp}"
        " --out-dir {params.out_dir:q} --options {params.options:q} > {log:q} 2>&1"
