# The embedded demo cohort: synthetic pyramidal TIFFs built from real tissue crops, with a planted
# survival signal (a simulation, not a result; see README). Only slides whose path lies under
# results/demo_slides/ are produced here; real slide files are read where they are.


rule demo_slide:
    input:
        clinical=lambda wildcards: DEMO_CLINICAL[wildcards.demo_slide],
        signatures=config["signatures"],
        low_risk=DEMO_SOURCES["low_risk"],
        high_risk=DEMO_SOURCES["high_risk"],
    output:
        f"{DEMO_SLIDE_DIR}/{{demo_slide}}",
    log:
        f"logs/demo_slides/{{demo_slide}}.log",
    conda:
        "../../envs/slides.yaml"
    resources:
        **SLIDE_JOB,
    params:
        options=options("demo"),
    shell:
        "exec python -m ghanet_workflow.cli demo-slide --slide-id {wildcards.demo_slide:q} --clinical {input.clinical:q}"
        " --low-risk-slide {input.low_risk:q} --high-risk-slide {input.high_risk:q} --signatures {input.signatures:q}"
        " --out {output:q} --options {params.options:q} > {log:q} 2>&1"
