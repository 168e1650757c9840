# One job per (model, fold): per-fold genomic preprocessing (training patients only), training with
# an atomic checkpoint every epoch (a killed or timed-out job resumes on rerun), prediction and metrics,
# and on the test patients the gene reconstruction (every model; header only without a
# reconstruction head) and the CAB attention of the extreme-risk patients (G-HANet; empty otherwise).


rule train_fold:
    input:
        patients=rules.build_cohort.output.patients,
        genomics=rules.build_cohort.output.genomics,
        groups=rules.build_cohort.output.groups,
        slides=rules.build_cohort.output.slides,
        fold=f"{RESULTS}/splits/fold_{{fold}}.csv",
    output:
        predictions=f"{RESULTS}/models/{{model}}/fold_{{fold}}/predictions.csv",
        metrics=f"{RESULTS}/models/{{model}}/fold_{{fold}}/metrics.json",
        model=f"{RESULTS}/models/{{model}}/fold_{{fold}}/model.pt",
        log_csv=f"{RESULTS}/models/{{model}}/fold_{{fold}}/training_log.csv",
        reconstruction=f"{RESULTS}/models/{{model}}/fold_{{fold}}/reconstruction.csv",
        attention=f"{RESULTS}/models/{{model}}/fold_{{fold}}/attention.h5",
    log:
        f"{LOGS}/train_fold/{{model}}_fold_{{fold}}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=mem_mb_training,
        runtime=runtime_training,
    params:
        cohort_dir=sibling_dir("patients"),
        out_dir=parent_dir("predictions"),
        options=train_options(),
    shell:
        "python -m ghanet_workflow.cli train --cohort-dir {params.cohort_dir:q} --fold-csv {input.fold:q}"
        " --model {wildcards.model:q} --out-dir {params.out_dir:q} --threads {threads}"
        " --options {params.options:q} > {log:q} 2>&1"
