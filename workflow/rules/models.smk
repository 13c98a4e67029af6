# Models: tiny twins are built from wig's shipped configs, the synthetic world's base is
# pretrained here; real checkpoints are named in config.


rule build_tiny_model:
    output:
        directory(study_path("{model}/model")),
    log:
        study_path("logs/{model}/build_tiny_model.log"),
    wildcard_constraints:
        model=_names(STUDY.bases("tiny")),
    threads: 1
    params:
        spec=from_study(STUDY.model_spec),
        config=from_study(STUDY.tiny_config),
    script:
        "../scripts/build_tiny.py"


# The synthetic world's base (wig.synthetic.pretrain), stage by stage: a UNet setting keeps the autoencoder.
rule pretrain_vae:
    output:
        directory(study_path("{model}/pretrain/vae")),
    log:
        study_path("logs/{model}/pretrain_vae.log"),
    benchmark:
        study_path("{model}/benchmarks/pretrain_vae.tsv")
    wildcard_constraints:
        model=_names(STUDY.bases("synthetic")),
    threads: 2
    params:
        config=from_study(STUDY.pretrain_config, stage="vae"),
    script:
        "../scripts/pretrain_vae.py"


rule pretrain_model:
    input:
        vae=rules.pretrain_vae.output[0],
    output:
        directory(study_path("{model}/model")),
    log:
        study_path("logs/{model}/pretrain_model.log"),
    benchmark:
        study_path("{model}/benchmarks/pretrain_model.tsv")
    wildcard_constraints:
        model=_names(STUDY.bases("synthetic")),
    threads: 2
    params:
        config=from_study(STUDY.pretrain_config, stage="model"),
    script:
        "../scripts/pretrain_model.py"


# Is the base good enough for the study to mean anything? CFG at the grid's scales, read by the
# oracle: for a base pretrained here and for the shipped one alike.
rule base_accuracy:
    input:
        unpack(get_model),
    output:
        table=study_path("{model}/tables/base_accuracy.parquet"),
        md=study_path("{model}/tables/base_accuracy.md"),
    log:
        study_path("logs/{model}/base_accuracy.log"),
    benchmark:
        study_path("{model}/benchmarks/base_accuracy.tsv")
    wildcard_constraints:
        model=_names(STUDY.world_bases()),
    threads: 2
    params:
        model=get_model_ref,
        scales=STUDY.cfg_scales,
        settings=canon(config["base_accuracy"]),
        runtime=RUNTIME,
    script:
        "../scripts/base_accuracy.py"


# Real weights: fetched on the submit host (compute nodes may have no internet) into the hub cache;
# jobs load the recorded local path.
rule resolve_model:
    output:
        study_path("{model}/weights.json"),
    log:
        study_path("logs/{model}/resolve_model.log"),
    localrule: True
    params:
        spec=from_study(STUDY.model_spec),
    script:
        "../scripts/resolve_model.py"


rule resolve_encoder:
    output:
        study_path("encoders/{encoder}.json"),
    log:
        study_path("logs/resolve_encoder/{encoder}.log"),
    localrule: True
    params:
        spec=from_study(STUDY.encoder_spec),
    script:
        "../scripts/resolve_encoder.py"


# A given fine-tune is checked against its base here (tensor names, shapes, dtypes, finite values),
# before any generation job can start.
rule resolve_finetune:
    input:
        unpack(get_model),
    output:
        study_path("{model}/{finetune}/weights.json"),
    log:
        study_path("logs/{model}/{finetune}/resolve_finetune.log"),
    localrule: True
    params:
        spec=from_study(STUDY.finetune_weights),
        method=from_study(STUDY.finetune_settings),
        model=get_model_ref,
    script:
        "../scripts/resolve_finetune.py"
