# Generation: one job per (model, concept, LoRA seed, chunk of grid points, chunk of seeds); all of
# the concept's prompts batched; one model load. Then a same-seed image grid per (model, concept).


rule generate:
    input:
        unpack(generate_input),
    output:
        directory("results/{model}/samples/{concept}/lora{lseed}/{points}/seeds{seeds}"),
    params:
        model=model_ref,
        guidance=guidance_of,
        prompts=concept_prompts,
        sampling=SAMPLING,
        runtime=RUNTIME,
        code=code_hash("guidance", "sampling", "families", "lora", "models", "generation", "atomic"),
    log:
        "logs/{model}/generate/{concept}/lora{lseed}/{points}/seeds{seeds}.log",
    benchmark:
        "results/{model}/benchmarks/generate/{concept}/lora{lseed}/{points}/seeds{seeds}.tsv"
    threads: config["runtime"]["threads"]
    resources:
        gpu=1,
    script:
        "../scripts/generate.py"


rule grid:
    input:
        sample_dirs,
    output:
        report("results/{model}/grids/{concept}.png", caption="../report/grid.rst", category="Image grids",
               labels={"model": "{model}", "concept": "{concept}"}),
    params:
        points=grid_points,
        rows=grid_rows,
        columns=grid_columns,
        code=code_hash("grids", "atomic"),
    log:
        "logs/{model}/grid/{concept}.log",
    script:
        "../scripts/grid.py"
