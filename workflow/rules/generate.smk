# Generation: one job per (model, method, grid point, seed), all prompts batched, one model load.


rule generate:
    input:
        unpack(model_input),
        lora="results/{model}/lora/demo/pytorch_lora_weights.safetensors",
    output:
        expand(SAMPLES + "/{pid}.png", pid=PROMPT_IDS, allow_missing=True),
    params:
        model=model_ref,
        guidance=guidance_of,
        prompts=PROMPTS,
        sampling=config["sampling"],
        runtime=config["runtime"],
        code=code_hash("guidance", "sampling", "lora", "models", "jobs"),
    log:
        "logs/{model}/generate/{method}/{point}/seed{seed}.log",
    benchmark:
        "results/{model}/benchmarks/generate/{method}/{point}/seed{seed}.tsv"
    threads: config["runtime"]["threads"]
    resources:
        gpu=1,
    script:
        "../scripts/generate.py"


rule grid:
    input:
        all_samples,
    output:
        "results/{model}/grid.png",
    params:
        rows=grid_rows(),
        columns=[f"s{s} {pid}" for s in SEEDS for pid in PROMPT_IDS],
        code=code_hash("grids", "jobs"),
    log:
        "logs/{model}/grid.log",
    script:
        "../scripts/grid.py"
