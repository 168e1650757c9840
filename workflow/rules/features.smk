# Patch features with the configured encoder (CUDA when present, else CPU).


rule extract_features:
    input:
        slide=slide_path,
        coords=rules.tile_slide.output.coords,
    output:
        f"{RESULTS}/features/{{encoder}}/{{slide}}.h5",
    log:
        f"{LOGS}/extract_features/{{encoder}}/{{slide}}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=mem_mb_features,
        runtime=runtime_features,
    params:
        options=options("features"),
    shell:
        "python -m ghanet_workflow.cli extract --slides {input.slide:q} --coords {input.coords:q} --out {output:q}"
        " --options {params.options:q} > {log:q} 2>&1"
