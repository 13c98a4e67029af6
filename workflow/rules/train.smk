# Personalization: class images per (model, class noun); one fine-tune run per (model, fine-tune,
# concept, seed) with the method its `personalization:` entry names (wig.personalization).


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


rule train:
    input:
        unpack(get_train_input),
    output:
        directory("results/{model}/{finetune}/runs/{concept}/ft{fseed}"),
    log:
        "logs/{model}/{finetune}/train/{concept}/ft{fseed}.log",
    benchmark:
        "results/{model}/{finetune}/benchmarks/train/{concept}/ft{fseed}.tsv"
    threads: config["runtime"]["threads"]
    resources:
        gpu=1,
    params:
        model=get_model_ref,
        method=from_study(STUDY.finetune_settings),
        subject=from_study(STUDY.subject_prompts),
        runtime=RUNTIME,
    script:
        "../scripts/train.py"
