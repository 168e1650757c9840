# Aggregate every fold of every model into the report tables and figures. Runs in seconds on a
# CPU and never trains: changing a `report:` option reruns this rule only. A complete report
# removes the partial one an earlier failed run left (see write_partial_report in common.smk). Every table is written
# as markdown, CSV and HTML; the HTML page and every figure are registered for
# `snakemake --report results/report.html`, one label ("result") per entry, one subcategory per cohort.


rule report:
    input:
        metrics=fold_outputs("metrics.json"),
        predictions=fold_outputs("predictions.csv"),
        training_logs=fold_outputs("training_log.csv"),
        reconstruction=fold_outputs("reconstruction.csv"),
        attention=fold_outputs("attention.h5"),
        slides=rules.build_cohort.output.slides,
        qc=tile_qc_files,
        qc_png=tile_qc_pngs,
    output:
        cindex_md=f"{RESULTS}/report/cindex.md",
        cindex_html=report(
            f"{RESULTS}/report/cindex.html",
            caption="../report/cindex.rst",
            category="Survival",
            subcategory=COHORT,
            labels={"result": "C-index per fold (table)"},
        ),
        cindex_csv=f"{RESULTS}/report/cindex.csv",
        predictions=report(
            f"{RESULTS}/report/predictions.csv",
            caption="../report/predictions.rst",
            category="Survival",
            subcategory=COHORT,
            labels={"result": "out-of-fold predictions (CSV)"},
        ),
        km=report(
            f"{RESULTS}/report/km.png",
            caption="../report/km.rst",
            category="Survival",
            subcategory=COHORT,
            labels={"result": "Kaplan-Meier by predicted risk"},
        ),
        cindex_strip=report(
            f"{RESULTS}/report/cindex_strip.png",
            caption="../report/cindex_strip.rst",
            category="Survival",
            subcategory=COHORT,
            labels={"result": "C-index per fold (figure)"},
        ),
        reconstruction_md=f"{RESULTS}/report/reconstruction.md",
        reconstruction_html=report(
            f"{RESULTS}/report/reconstruction.html",
            caption="../report/reconstruction.rst",
            category="Genomic reconstruction",
            subcategory=COHORT,
            labels={"result": "Pearson r per signature group"},
        ),
        reconstruction_csv=f"{RESULTS}/report/reconstruction.csv",
        attention=report(
            f"{RESULTS}/report/attention_heatmaps.png",
            caption="../report/attention_heatmaps.rst",
            category="Interpretability",
            subcategory=COHORT,
            labels={"result": "G-HANet attention heatmaps"},
        ),
        training_curves=report(
            f"{RESULTS}/report/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
            subcategory=COHORT,
            labels={"result": "training curves"},
        ),
        failed_md=f"{RESULTS}/report/failed_slides.md",
        failed_html=report(
            f"{RESULTS}/report/failed_slides.html",
            caption="../report/failed_slides.rst",
            category="Slides",
            subcategory=COHORT,
            labels={"result": "failed slides and QC"},
        ),
        failed_csv=f"{RESULTS}/report/failed_slides.csv",
        qc_sheet=report(
            f"{RESULTS}/report/qc_contact_sheet.png",
            caption="../report/qc_contact_sheet.rst",
            category="Slides",
            subcategory=COHORT,
            labels={"result": "tiling QC contact sheet"},
        ),
    log:
        f"{LOGS}/report.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **SMALL_JOB,
    params:
        out_dir=parent_dir("cindex_md"),
        partial_dir=PARTIAL_REPORT,
        folds=FOLDS,
        cohort=COHORT,
        encoder=ENCODER,
        target_mpp=config["tiling"]["target_mpp"],
        options=options("report"),
    shell:
        "exec python -m ghanet_workflow.cli report --metrics {input.metrics:q} --predictions {input.predictions:q}"
        " --training-logs {input.training_logs:q} --reconstruction {input.reconstruction:q}"
        " --attention {input.attention:q} --slides {input.slides:q}"
        " --qc {input.qc:q} --qc-png {input.qc_png:q} --folds {params.folds}"
        " --cohort {params.cohort:q} --encoder {params.encoder:q} --target-mpp {params.target_mpp}"
        " --out-dir {params.out_dir:q} --replaces {params.partial_dir:q} --options {params.options:q} > {log:q} 2>&1"


# The models x cohorts table: this run's cohort plus the cindex.csv of other cohorts' runs listed
# under `paper_table.other_cohorts` (run each cohort with its own --configfile first).
rule paper_table:
    input:
        cindex=[rules.report.output.cindex_csv, *config["paper_table"]["other_cohorts"]],
    output:
        md=f"{RESULTS}/report/paper_table.md",
        tex=f"{RESULTS}/report/paper_table.tex",
        csv=f"{RESULTS}/report/paper_table.csv",
        html=report(
            f"{RESULTS}/report/paper_table.html",
            caption="../report/paper_table.rst",
            category="Survival",
            subcategory="All cohorts",
            labels={"result": "models x cohorts (paper table)"},
        ),
    log:
        f"{LOGS}/paper_table.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **SMALL_JOB,
    params:
        out_dir=parent_dir("md"),
        options=options("report"),
    shell:
        "exec python -m ghanet_workflow.cli report paper --cindex {input.cindex:q} --out-dir {params.out_dir:q}"
        " --options {params.options:q} > {log:q} 2>&1"
