# Personalization: class images per (model, class noun), DreamBooth-LoRA per (model, concept).


rule class_images:
    input:
        unpack(get_model),
    output:
        directory("results/{model}/class_images/{noun}"),
    log:
        "logs/{model}/class_images/{noun}.log",
    benchmark:
        "results/{model}/benchmarks/class_images/{noun}.tsv"
    threads: config["runtime"]["threads"]
    resources:
        gpu=1,
    params:
        model=get_model_ref,
        settings=from_study(STUDY.class_image_settings),
        runtime=RUNTIME,
    script:
        "../scripts/class_images.py"


rule train_lora:
    input:
        unpack(get_train_input),
    output:
        directory("results/{model}/lora/{concept}/seed{lseed}"),
    log:
        "logs/{model}/train_lora/{concept}/seed{lseed}.log",
    benchmark:
        "results/{model}/benchmarks/train_lora/{concept}/seed{lseed}.tsv"
    threads: config["runtime"]["threads"]
    resources:
        gpu=1,
    params:
        model=get_model_ref,
        settings=from_study(STUDY.train_settings),
        runtime=RUNTIME,
    script:
        "../scripts/train_lora.py"
