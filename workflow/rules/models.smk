# Models: tiny twins are built from wig's shipped configs; real checkpoints are named in config.


rule build_tiny_model:
    output:
        directory("results/{model}/model"),
    params:
        spec=model_spec,
        config=tiny_config,
        code=code_hash("tiny", "atomic"),
    log:
        "logs/{model}/build_tiny_model.log",
    threads: 1
    script:
        "../scripts/build_tiny.py"


# Real weights: fetched on the submit host (compute nodes may have no internet) into the hub cache;
# jobs load the recorded local path. Params are the spec alone: a wig code change never refetches.
rule resolve_model:
    output:
        "results/{model}/weights.json",
    params:
        spec=model_spec,
    log:
        "logs/{model}/resolve_model.log",
    localrule: True
    script:
        "../scripts/resolve_weights.py"


rule resolve_encoder:
    output:
        "results/encoders/{encoder}.json",
    params:
        spec=encoder_spec,
    log:
        "logs/resolve_encoder/{encoder}.log",
    localrule: True
    script:
        "../scripts/resolve_weights.py"
