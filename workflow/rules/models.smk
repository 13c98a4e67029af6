# Models: tiny twins are built from wig's shipped configs, the synthetic world's base is
# pretrained here; real checkpoints are named in config.


rule build_tiny_model:
    output:
        directory("results/{model}/model"),
    params:
        spec=from_study(STUDY.model_spec),
        config=from_study(STUDY.tiny_config),
    log:
        "logs/{model}/build_tiny_model.log",
    threads: 1
    wildcard_constraints:
        model=_names(STUDY.bases("tiny")),
    script:
        "../scripts/build_tiny.py"


# The synthetic world's base (wig.pretrain), stage by stage: a UNet setting keeps the autoencoder.
rule pretrain_vae:
    output:
        directory("results/{model}/pretrain/vae"),
    params:
        config=from_study(STUDY.pretrain_config, stage="vae"),
    log:
        "logs/{model}/pretrain_vae.log",
    benchmark:
        "results/{model}/benchmarks/pretrain_vae.tsv"
    threads: 2
    wildcard_constraints:
        model=_names(STUDY.bases("synthetic")),
    script:
        "../scripts/pretrain.py"


rule pretrain_model:
    input:
        vae="results/{model}/pretrain/vae",
    output:
        directory("results/{model}/model"),
    params:
        config=from_study(STUDY.pretrain_config, stage="model"),
    log:
        "logs/{model}/pretrain_model.log",
    benchmark:
        "results/{model}/benchmarks/pretrain_model.tsv"
    threads: 2
    wildcard_constraints:
        model=_names(STUDY.bases("synthetic")),
    script:
        "../scripts/pretrain.py"


# Is the base good enough for the study to mean anything? CFG at the grid's scales, read by the oracle.
rule base_accuracy:
    input:
        model="results/{model}/model",
    output:
        table="results/{model}/tables/base_accuracy.parquet",
        md="results/{model}/tables/base_accuracy.md",
    params:
        scales=STUDY.cfg_scales,
        settings=canon(config["base_accuracy"]),
        runtime=RUNTIME,
    log:
        "logs/{model}/base_accuracy.log",
    benchmark:
        "results/{model}/benchmarks/base_accuracy.tsv"
    threads: 2
    wildcard_constraints:
        model=_names(STUDY.bases("synthetic")),
    script:
        "../scripts/base_accuracy.py"


# Real weights: fetched on the submit host (compute nodes may have no internet) into the hub cache;
# jobs load the recorded local path.
rule resolve_model:
    output:
        "results/{model}/weights.json",
    params:
        spec=from_study(STUDY.model_spec),
    log:
        "logs/{model}/resolve_model.log",
    localrule: True
    script:
        "../scripts/resolve_weights.py"


rule resolve_encoder:
    output:
        "results/encoders/{encoder}.json",
    params:
        spec=from_study(STUDY.encoder_spec),
    log:
        "logs/resolve_encoder/{encoder}.log",
    localrule: True
    script:
        "../scripts/resolve_weights.py"
