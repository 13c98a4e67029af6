# Generation: one job per (model, concept, LoRA seed, chunk of grid points, chunk of seeds); all of
# the concept's prompts batched; one model load. Then a same-seed image grid per (model, concept).


rule generate:
    input:
        unpack(get_generate_input),
    output:
        directory("results/{model}/samples/{concept}/lora{lseed}/{points}/seeds{seeds}"),
    log:
        "logs/{model}/generate/{concept}/lora{lseed}/{points}/seeds{seeds}.log",
    benchmark:
        "results/{model}/benchmarks/generate/{concept}/lora{lseed}/{points}/seeds{seeds}.tsv"
    threads: config["runtime"]["threads"]
    resources:
        gpu=1,
    params:
        model=get_model_ref,
        guidance=from_study(STUDY.guidance_of),
        prompts=from_study(STUDY.concept_prompts),
        sampling=SAMPLING,
        runtime=RUNTIME,
    script:
        "../scripts/generate.py"


rule grid:
    input:
        get_grid_samples,
    output:
        report(
            "results/{model}/grids/{concept}.png",
            caption="../report/grid.rst",
            category="Image grids",
            labels={"model": "{model}", "concept": "{concept}"},
        ),
    log:
        "logs/{model}/grid/{concept}.log",
    params:
        layout=from_study(STUDY.grid_layout),
    script:
        "../scripts/grid.py"
