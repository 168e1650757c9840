# Aggregate every fold of every model into the report tables. Runs in seconds on a CPU.


rule report:
    input:
        metrics=fold_outputs("metrics.json"),
        predictions=fold_outputs("predictions.csv"),
        slides=rules.build_cohort.output.slides,
        qc=tile_qc_files,
    output:
        cindex_md=f"{RESULTS}/report/cindex.md",
        cindex_csv=f"{RESULTS}/report/cindex.csv",
        failed_md=f"{RESULTS}/report/failed_slides.md",
    log:
        f"{LOGS}/report.log",
    conda:
        "../../envs/report.yaml"
    params:
        out_dir=parent_dir("cindex_md"),
        options=options("report"),
    shell:
        "python -m ghanet_workflow.cli report --metrics {input.metrics:q} --predictions {input.predictions:q}"
        " --slides {input.slides:q} --qc {input.qc:q} --out-dir {params.out_dir:q}"
        " --options {params.options:q} > {log:q} 2>&1"
