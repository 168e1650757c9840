# Patch features with the configured encoder (CUDA when present, else CPU). Slides are processed in
# chunks of `features.slides_per_job`: one job (and one model load) per chunk, so a 10,000-slide
# cohort is a few hundred GPU jobs, not 10,000. Each slide's HDF5 is written atomically as soon as it
# is done; a killed chunk job resumes on rerun, skipping the slides that are already complete.


rule extract_features:
    input:
        slides=chunk_slide_paths,
        coords=chunk_coords,
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
    params:
        out=chunk_feature_files,
        options=options("features"),
    shell:
        "python -m ghanet_workflow.cli extract --slides {input.slides:q} --coords {input.coords:q}"
        " --out {params.out:q} --options {params.options:q} > {log:q} 2>&1"
        " && printf '%s\\n' {params.out:q} > {output.manifest:q}"


rule import_features:
    input:
        external=import_sources,
    output:
        manifest=f"{RESULTS}/features/{{encoder}}/chunks/{{chunk}}.txt",
    log:
        f"{LOGS}/import_features/{{encoder}}/{{chunk}}.log",
    wildcard_constraints:
        chunk=r"import\d+",
    conda:
        "../../envs/torch.yaml"
    params:
        out=import_feature_files,
        options=options("features"),
    shell:
        "python -m ghanet_workflow.cli extract --external {input.external:q}"
        " --out {params.out:q} --options {params.options:q} > {log:q} 2>&1"
        " && printf '%s\\n' {params.out:q} > {output.manifest:q}"
