# Patch features with each configured encoder ({encoder}: a label of ENCODERS; CUDA when present, else CPU). Slides are processed in
# chunks of `features.slides_per_job`: one job (and one model load) per chunk, so a 10,000-slide
# cohort is a few hundred GPU jobs, not 10,000. Each slide's HDF5 is written atomically as soon as it
# is done; a killed chunk job resumes on rerun, skipping the slides that are already complete.


rule extract_features:
    input:
        slides=cohort_slides("chunk_slide_paths"),
        coords=cohort_slides("chunk_coords"),
        redo=redo_markers(f"{RESULTS}/features/{{encoder}}/chunks/{{chunk}}.txt"),
    output:
        manifest=f"{RESULTS}/features/{{encoder}}/chunks/{{chunk}}.txt",
    log:
        f"{LOGS}/extract_features/{{encoder}}/{{chunk}}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=mem_mb_features,
        runtime=runtime_features,
        disk_mb=1000,
        run_settings=FEATURES_RUN_SETTINGS,
    params:
        out=cohort_slides("chunk_feature_files"),
        options=features_options,
    shell:
        "exec python -m ghanet_workflow.cli extract --slides {input.slides:q} --coords {input.coords:q}"
        " --out {params.out:q} --manifest {output.manifest:q}"
        " --options {params.options:q} {resources.run_settings:q} > {log:q} 2>&1"


rule import_features:
    input:
        external=cohort_slides("import_sources"),
        redo=redo_markers(f"{RESULTS}/features/{{encoder}}/chunks/{{chunk}}.txt"),
    output:
        manifest=f"{RESULTS}/features/{{encoder}}/chunks/{{chunk}}.txt",
    log:
        f"{LOGS}/import_features/{{encoder}}/{{chunk}}.log",
    wildcard_constraints:
        chunk=r"import\d+",
    conda:
        "../../envs/torch.yaml"
    resources:
        **SMALL_JOB,
        run_settings=FEATURES_RUN_SETTINGS,
    params:
        out=cohort_slides("import_feature_files"),
        options=features_options,
    shell:
        "exec python -m ghanet_workflow.cli extract --external {input.external:q}"
        " --out {params.out:q} --manifest {output.manifest:q}"
        " --options {params.options:q} {resources.run_settings:q} > {log:q} 2>&1"


# A per-slide file found deleted or truncated when the DAG was built (ghanet_workflow.slide_files):
# this marker, named after the damaged target and what happened to it, joins that target's job's
# inputs, so Snakemake reruns exactly that tiling or extraction job; it stays as the record.
rule record_damaged_file:
    output:
        "{target}.redo-{digest}",
    log:
        "logs/record_damaged_file/{target}.redo-{digest}.log",
    wildcard_constraints:
        digest="[0-9a-f]{12}",
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        **SMALL_JOB,
    params:
        text=redo_marker_text,
    shell:
        "exec printf '%s\\n' {params.text:q} > {output:q} 2> {log:q}"
