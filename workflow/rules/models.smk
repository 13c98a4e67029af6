# Models: tiny twins are built from wig's shipped configs; real checkpoints are named in config.


rule build_tiny_model:
    output:
        directory("results/{model}/model"),
    params:
        spec=model_spec,
        code=code_hash("tiny", "atomic"),
    log:
        "logs/{model}/build_tiny_model.log",
    threads: 1
    script:
        "../scripts/build_tiny.py"
