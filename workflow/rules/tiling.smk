# Tissue segmentation + patch coordinates, one slide per job (grouped into larger cluster jobs by
# the profile). A bad slide does not fail the job: it yields an empty coords file whose status and
# reason end up in the failed-slides table.


rule tile_slide:
    input:
        slide=cohort_slides("slide_path"),
        redo=redo_markers(f"{RESULTS}/tiles/{{slide}}.h5"),
    output:
        coords=f"{RESULTS}/tiles/{{slide}}.h5",
        qc=f"{RESULTS}/tiles/{{slide}}.qc.json",
        png=f"{RESULTS}/tiles/qc/{{slide}}.png",
    log:
        f"{LOGS}/tile_slide/{{slide}}.log",
    conda:
        "../../envs/slides.yaml"
    resources:
        **SLIDE_JOB,
    params:
        slide_id=cohort_slides("slide_id"),
        mpp=cohort_slides("mpp_option"),
        options=options("tiling"),
    shell:
        "exec python -m ghanet_workflow.cli tile --slide {input.slide:q} --slide-id {params.slide_id:q} {params.mpp}"
        " --out-h5 {output.coords:q} --out-qc-json {output.qc:q} --out-png {output.png:q}"
        " --options {params.options:q} > {log:q} 2>&1"
