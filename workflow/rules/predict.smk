# WSI-only prediction for new patients (`snakemake predict`, config section `predict`): the new
# slides are tiled and featurised under results/<cohort>/predict/ by the training rules, with the
# training options, then every fold model of `predict.model` scores each patient from patch
# features alone (no clinical or genomic table): risks.csv with the mean risk over the folds, its
# spread and the risk group by the stored training cut-offs.


use rule tile_slide as predict_tile_slide with:
    input:
        slide=PREDICT_SLIDE_SET.slide_path,
    output:
        coords=f"{PREDICT_DIR}/tiles/{{slide}}.h5",
        qc=f"{PREDICT_DIR}/tiles/{{slide}}.qc.json",
        png=f"{PREDICT_DIR}/tiles/qc/{{slide}}.png",
    log:
        f"{PREDICT_LOGS}/predict/tile_slide/{{slide}}.log",
    params:
        slide_id=PREDICT_SLIDE_SET.slide_id,
        mpp=PREDICT_SLIDE_SET.mpp_option,


use rule extract_features as predict_extract_features with:
    input:
        slides=PREDICT_SLIDE_SET.chunk_slide_paths,
        coords=PREDICT_SLIDE_SET.chunk_coords,
    output:
        manifest=f"{PREDICT_DIR}/features/{{encoder}}/chunks/{{chunk}}.txt",
    log:
        f"{PREDICT_LOGS}/predict/extract_features/{{encoder}}/{{chunk}}.log",
    params:
        out=PREDICT_SLIDE_SET.chunk_feature_files,


rule predict_risks:
    input:
        slides=predict_slide_table,
        manifests=PREDICT_SLIDE_SET.manifests,
        models=predict_model_files,
    output:
        risks=f"{PREDICT_DIR}/risks.csv",
    log:
        f"{PREDICT_LOGS}/predict/predict_risks.log",
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb_features,
        runtime=runtime_features,
        disk_mb=1000,
        run_settings=PREDICT_RUN_SETTINGS,
    params:
        features_dir=f"{PREDICT_DIR}/features/{PREDICT_ENCODER}",
        model_dirs=predict_model_dirs,
    shell:
        "exec python -m ghanet_workflow.cli predict --slides {input.slides:q} --features-dir {params.features_dir:q}"
        " --model-dirs {params.model_dirs:q} --out {output.risks:q} --options {resources.run_settings:q} > {log:q} 2>&1"


rule predict:
    input:
        rules.predict_risks.output.risks,
