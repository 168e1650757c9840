# The report: one rule per product (`ghanet-wf report <product>`, src/ghanet_workflow/report/).
# Each runs in seconds on a CPU and never trains. Its params carry only the `report:` options that
# product reads (report_options), so a changed option reruns the products that show it and no
# other. The slides products need no fold, so they are written even when a fold failed. Every
# table is markdown, CSV and HTML; the HTML pages and figures are registered for
# `snakemake --report results/report.html`, one label ("result") per entry, one subcategory per cohort.


rule report_cindex:
    input:
        metrics=fold_outputs("metrics.json"),
        predictions=fold_outputs("predictions.csv"),
    output:
        md=f"{RESULTS}/report/cindex.md",
        html=report(
            f"{RESULTS}/report/cindex.html",
            caption="../report/cindex.rst",
            category="Survival",
            subcategory="{cohort}",
            labels={"result": "C-index per fold (table)"},
        ),
        csv=f"{RESULTS}/report/cindex.csv",
        predictions=report(
            f"{RESULTS}/report/predictions.csv",
            caption="../report/predictions.rst",
            category="Survival",
            subcategory="{cohort}",
            labels={"result": "out-of-fold predictions (CSV)"},
        ),
        km=report(
            f"{RESULTS}/report/km.png",
            caption="../report/km.rst",
            category="Survival",
            subcategory="{cohort}",
            labels={"result": "Kaplan-Meier by predicted risk"},
        ),
        strip=report(
            f"{RESULTS}/report/cindex_strip.png",
            caption="../report/cindex_strip.rst",
            category="Survival",
            subcategory="{cohort}",
            labels={"result": "C-index per fold (figure)"},
        ),
    log:
        f"{LOGS}/report/cindex.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **SMALL_JOB,
    params:
        out_dir=parent_dir("md"),
        partial_dir=lambda wildcards: f"results/{wildcards.cohort}/report_partial",
        folds=FOLDS,
        options=report_options("cindex"),
    shell:
        "exec python -m ghanet_workflow.cli report cindex --metrics {input.metrics:q}"
        " --predictions {input.predictions:q} --folds {params.folds} --cohort {wildcards.cohort:q}"
        " --out-dir {params.out_dir:q} --replaces {params.partial_dir:q} --options {params.options:q} > {log:q} 2>&1"


# Each model against report.reference_model on the same folds: mean ΔC, corrected resampled
# t-test, paired bootstrap CI (src/ghanet_workflow/report/comparison.py).
rule report_comparison:
    input:
        fold_outputs("predictions.csv"),
    output:
        md=f"{RESULTS}/report/comparison.md",
        html=report(
            f"{RESULTS}/report/comparison.html",
            caption="../report/comparison.rst",
            category="Survival",
            subcategory="{cohort}",
            labels={"result": "paired model comparison"},
        ),
        csv=f"{RESULTS}/report/comparison.csv",
        tex=f"{RESULTS}/report/comparison.tex",
    log:
        f"{LOGS}/report/comparison.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **SMALL_JOB,
    params:
        out_dir=parent_dir("md"),
        options=report_options("comparison"),
    shell:
        "exec python -m ghanet_workflow.cli report comparison --predictions {input:q} --cohort {wildcards.cohort:q}"
        " --out-dir {params.out_dir:q} --options {params.options:q} > {log:q} 2>&1"


rule report_training_curves:
    input:
        fold_outputs("training_log.csv"),
    output:
        report(
            f"{RESULTS}/report/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
            subcategory="{cohort}",
            labels={"result": "training curves"},
        ),
    log:
        f"{LOGS}/report/training_curves.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **SMALL_JOB,
    params:
        out_dir=parent_dir(0),
        options=report_options("training-curves"),
    shell:
        "exec python -m ghanet_workflow.cli report training-curves --training-logs {input:q}"
        " --out-dir {params.out_dir:q} --options {params.options:q} > {log:q} 2>&1"


rule report_failed_slides:
    input:
        slides=rules.build_cohort.output.slides,
        qc=cohort_slides("tile_qc_files"),
    output:
        md=f"{RESULTS}/report/failed_slides.md",
        html=report(
            f"{RESULTS}/report/failed_slides.html",
            caption="../report/failed_slides.rst",
            category="Slides",
            subcategory="{cohort}",
            labels={"result": "failed slides and QC"},
        ),
        csv=f"{RESULTS}/report/failed_slides.csv",
    log:
        f"{LOGS}/report/failed_slides.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **SMALL_JOB,
    params:
        out_dir=parent_dir("md"),
        encoder=ENCODER,
        target_mpp=config["tiling"]["target_mpp"],
        options=report_options("failed-slides"),
    shell:
        "exec python -m ghanet_workflow.cli report failed-slides --slides {input.slides:q} --qc {input.qc:q}"
        " --encoder {params.encoder:q} --target-mpp {params.target_mpp}"
        " --out-dir {params.out_dir:q} --options {params.options:q} > {log:q} 2>&1"


# The thumbnails are read from tiles/qc/ (made with the coords files slides.csv waits for), not
# listed as inputs: 10,000 slides would add 20,000 paths to every dry run for a 48-picture sheet.
rule report_qc_sheet:
    input:
        slides=rules.build_cohort.output.slides,
    output:
        report(
            f"{RESULTS}/report/qc_contact_sheet.png",
            caption="../report/qc_contact_sheet.rst",
            category="Slides",
            subcategory="{cohort}",
            labels={"result": "tiling QC contact sheet"},
        ),
    log:
        f"{LOGS}/report/qc_sheet.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **SMALL_JOB,
    params:
        out_dir=parent_dir(0),
        qc_png_dir=lambda wildcards: f"results/{wildcards.cohort}/tiles/qc",
        options=report_options("qc-sheet"),
    shell:
        "exec python -m ghanet_workflow.cli report qc-sheet --slides {input.slides:q}"
        " --qc-png-dir {params.qc_png_dir:q} --out-dir {params.out_dir:q} --options {params.options:q} > {log:q} 2>&1"


rule report_reconstruction:
    input:
        fold_outputs("reconstruction.csv"),
    output:
        md=f"{RESULTS}/report/reconstruction.md",
        html=report(
            f"{RESULTS}/report/reconstruction.html",
            caption="../report/reconstruction.rst",
            category="Genomic reconstruction",
            subcategory="{cohort}",
            labels={"result": "Pearson r per signature group"},
        ),
        csv=f"{RESULTS}/report/reconstruction.csv",
        png=report(
            f"{RESULTS}/report/reconstruction.png",
            caption="../report/reconstruction.rst",
            category="Genomic reconstruction",
            subcategory="{cohort}",
            labels={"result": "group-score r per signature group (figure)"},
        ),
    log:
        f"{LOGS}/report/reconstruction.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **SMALL_JOB,
    params:
        out_dir=parent_dir("md"),
        folds=FOLDS,
        options=report_options("reconstruction"),
    shell:
        "exec python -m ghanet_workflow.cli report reconstruction --reconstruction {input:q}"
        " --folds {params.folds} --out-dir {params.out_dir:q} --options {params.options:q} > {log:q} 2>&1"


rule report_attention:
    input:
        attention=fold_outputs("attention.h5"),
        slides=rules.build_cohort.output.slides,
    output:
        report(
            f"{RESULTS}/report/attention_heatmaps.png",
            caption="../report/attention_heatmaps.rst",
            category="Interpretability",
            subcategory="{cohort}",
            labels={"result": "G-HANet attention heatmaps"},
        ),
    log:
        f"{LOGS}/report/attention.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **SMALL_JOB,
    params:
        out_dir=parent_dir(0),
        options=report_options("attention"),
    shell:
        "exec python -m ghanet_workflow.cli report attention --attention {input.attention:q}"
        " --slides {input.slides:q} --out-dir {params.out_dir:q} --options {params.options:q} > {log:q} 2>&1"


# Over several cohorts: every cohort's folds in one comparison, with the overall rows (the mean
# ΔC over cohorts); the paper table marks its cells from it.
rule report_comparison_all:
    input:
        [
            path
            for c in COHORTS.values()
            for path in cohort_fold_outputs(c, "predictions.csv")
        ],
    output:
        md=f"{RUN_REPORT}/comparison.md",
        html=report(
            f"{RUN_REPORT}/comparison.html",
            caption="../report/comparison.rst",
            category="Survival",
            subcategory="All cohorts",
            labels={"result": "paired model comparison, all cohorts"},
        ),
        csv=f"{RUN_REPORT}/comparison.csv",
        tex=f"{RUN_REPORT}/comparison.tex",
    log:
        "logs/report/comparison.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **SMALL_JOB,
    params:
        out_dir=parent_dir("md"),
        options=report_options("comparison"),
    shell:
        "exec python -m ghanet_workflow.cli report comparison --predictions {input:q} --by-cohort"
        " --out-dir {params.out_dir:q} --options {params.options:q} > {log:q} 2>&1"


# The models (x encoders) x cohorts table of the run (results/report/): every cohort's cindex.csv plus those of
# other runs listed under `paper_table.other_cohorts`; a cell is marked where the comparison (the
# run's, and those next to the other runs' tables) says the model differs from the reference model.
rule paper_table:
    input:
        cindex=[
            *expand(rules.report_cindex.output.csv, cohort=COHORT_NAMES),
            *config["paper_table"]["other_cohorts"],
        ],
        comparison=[run_comparison(), *other_cohort_comparisons()],
    output:
        md=f"{RUN_REPORT}/paper_table.md",
        tex=f"{RUN_REPORT}/paper_table.tex",
        csv=f"{RUN_REPORT}/paper_table.csv",
        html=report(
            f"{RUN_REPORT}/paper_table.html",
            caption="../report/paper_table.rst",
            category="Survival",
            subcategory="All cohorts",
            labels={"result": "models x cohorts (paper table)"},
        ),
    log:
        "logs/report/paper_table.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **SMALL_JOB,
    params:
        out_dir=parent_dir("md"),
        default_encoder=ENCODER,
        options=report_options("paper"),
    shell:
        "exec python -m ghanet_workflow.cli report paper --cindex {input.cindex:q} --comparison {input.comparison:q}"
        " --out-dir {params.out_dir:q} --default-encoder {params.default_encoder:q}"
        " --options {params.options:q} > {log:q} 2>&1"
