# Models: tiny twins built from wig's shipped configs; the demo's stand-in LoRA.


rule build_tiny_model:
    output:
        directory("results/{model}/model"),
    params:
        spec=model_spec,
        code=code_hash("tiny"),
    log:
        "logs/{model}/build_tiny_model.log",
    threads: 1
    script:
        "../scripts/build_tiny.py"


rule demo_lora:
    input:
        unpack(model_input),
    output:
        "results/{model}/lora/demo/pytorch_lora_weights.safetensors",
    params:
        model=model_ref,
        lora=config["demo_lora"],
        code=code_hash("lora", "models"),
    log:
        "logs/{model}/demo_lora.log",
    threads: 1
    script:
        "../scripts/demo_lora.py"
