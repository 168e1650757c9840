# Three jobs per (model, fold), so that each setting reruns only what it changes:
#   train_fold     (GPU) per-fold genomic preprocessing on the training patients, training with an
#                  atomic checkpoint every epoch (a killed, timed-out or extended run resumes),
#                  model.pt and the predictions of every split. Params: training + genomics.
#   evaluate_fold  (CPU) metrics.json of the test split. Params: evaluation.
#   interpret_fold (CPU) on the test patients: gene reconstruction (every model; header only
#                  without a reconstruction head) and the CAB attention of the extreme-risk patients
#                  (G-HANet; empty otherwise). No config setting changes it.
# {model} is a model label: the model's name on the default encoder, <model>@<label> on the
# features of encoder features.encoders.<label> (its cohort table: results/<cohort>/cohort@<label>/).


rule train_fold:
    input:
        patients=model_cohort_file("patients.csv"),
        genomics=model_cohort_file("genomics.csv.gz"),
        groups=model_cohort_file("groups.json"),
        slides=model_cohort_file("slides.csv"),
        store=feature_store_index,
        fold=f"{RESULTS}/splits/fold_{{fold}}.csv",
    output:
        model=f"{RESULTS}/models/{{model}}/fold_{{fold}}/model.pt",
        predictions=f"{RESULTS}/models/{{model}}/fold_{{fold}}/predictions.csv",
        log_csv=f"{RESULTS}/models/{{model}}/fold_{{fold}}/training_log.csv",
        preprocessing=f"{RESULTS}/models/{{model}}/fold_{{fold}}/preprocessing.json",
        info=f"{RESULTS}/models/{{model}}/fold_{{fold}}/train_info.json",
    log:
        f"{LOGS}/train_fold/{{model}}_fold_{{fold}}.log",
    wildcard_constraints:
        model=GPU_MODELS,
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=mem_mb_training,
        runtime=runtime_training,
        disk_mb=1000,
        run_settings=TRAINING_RUN_SETTINGS,
    params:
        cohort_dir=sibling_dir("patients"),
        out_dir=parent_dir("model"),
        options=train_options(),
    shell:
        "exec python -m ghanet_workflow.cli train --cohort-dir {params.cohort_dir:q} --fold-csv {input.fold:q}"
        " --model {wildcards.model:q} --out-dir {params.out_dir:q} --threads {threads}"
        " --options {params.options:q} {resources.run_settings:q} > {log:q} 2>&1"


# The same on CPUs, without a GPU request: the models fit without one (coxnet, scikit-survival).
# coxnet reads only the genomic preprocessing (its penalty path is fixed in ghanet_workflow.coxnet),
# so a training option changes nothing of it.
use rule train_fold as train_fold_cpu with:
    wildcard_constraints:
        model=CPU_MODEL_NAMES,
    threads: 1
    resources:
        mem_mb=mem_mb_training,
        runtime=runtime_training,
        disk_mb=1000,
        run_settings=TRAINING_RUN_SETTINGS,
    params:
        cohort_dir=sibling_dir("patients"),
        out_dir=parent_dir("model"),
        options=json.dumps({"genomics": output_settings("genomics")}, sort_keys=True),


rule evaluate_fold:
    input:
        predictions=rules.train_fold.output.predictions,
        preprocessing=rules.train_fold.output.preprocessing,
        info=rules.train_fold.output.info,
    output:
        metrics=f"{RESULTS}/models/{{model}}/fold_{{fold}}/metrics.json",
    log:
        f"{LOGS}/evaluate_fold/{{model}}_fold_{{fold}}.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **SMALL_JOB,
    params:
        model_dir=sibling_dir("predictions"),
        options=options("evaluation"),
    shell:
        "exec python -m ghanet_workflow.cli evaluate --model-dir {params.model_dir:q} --out {output.metrics:q}"
        " --options {params.options:q} > {log:q} 2>&1"


rule interpret_fold:
    input:
        model=rules.train_fold.output.model,
        predictions=rules.train_fold.output.predictions,
        preprocessing=rules.train_fold.output.preprocessing,
        patients=model_cohort_file("patients.csv"),
        genomics=model_cohort_file("genomics.csv.gz"),
        groups=model_cohort_file("groups.json"),
        slides=model_cohort_file("slides.csv"),
        store=feature_store_index,
        fold=f"{RESULTS}/splits/fold_{{fold}}.csv",
    output:
        reconstruction=f"{RESULTS}/models/{{model}}/fold_{{fold}}/reconstruction.csv",
        attention=f"{RESULTS}/models/{{model}}/fold_{{fold}}/attention.h5",
    log:
        f"{LOGS}/interpret_fold/{{model}}_fold_{{fold}}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb_training,
        runtime=runtime_training,
        disk_mb=1000,
    params:
        cohort_dir=sibling_dir("patients"),
        model_dir=sibling_dir("model"),
    shell:
        "exec python -m ghanet_workflow.cli interpret --cohort-dir {params.cohort_dir:q} --fold-csv {input.fold:q}"
        " --model-dir {params.model_dir:q} --threads {threads} > {log:q} 2>&1"
