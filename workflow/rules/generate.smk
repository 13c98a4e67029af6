# Generation: one job per (model, fine-tune, concept, its seed, chunk of grid points, chunk of
# seeds); all of the concept's prompts batched; one model load. Then a same-seed image grid per
# (model, fine-tune, concept).


rule generate:
    input:
        unpack(get_generate_input),
    output:
        directory("results/{model}/{finetune}/samples/{concept}/ft{fseed}/{points}/seeds{seeds}"),
    log:
        "logs/{model}/{finetune}/generate/{concept}/ft{fseed}/{points}/seeds{seeds}.log",
    benchmark:
        "results/{model}/{finetune}/benchmarks/generate/{concept}/ft{fseed}/{points}/seeds{seeds}.tsv"
    threads: config["runtime"]["threads"]
    resources:
        gpu=1,
    params:
        model=get_model_ref,
        method=from_study(STUDY.finetune_settings),
        guidance=from_study(STUDY.guidance_of),
        prompts=from_study(STUDY.concept_prompts),
        extra_texts=from_study(STUDY.extra_texts_of),
        sampling=SAMPLING,
        runtime=RUNTIME,
    script:
        "../scripts/generate.py"


rule grid:
    input:
        get_grid_samples,
    output:
        report(
            "results/{model}/{finetune}/grids/{concept}.png",
            caption="../report/grid.rst",
            category="Image grids",
            labels={"model": "{model}", "fine-tune": "{finetune}", "concept": "{concept}"},
        ),
    log:
        "logs/{model}/{finetune}/grid/{concept}.log",
    params:
        layout=from_study(STUDY.grid_layout),
    script:
        "../scripts/grid.py"
