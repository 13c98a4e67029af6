# Scores per generation job, then per model: tables with bootstrap CIs, paired comparisons
# against CFG; figures across models.


rule score:
    input:
        samples="results/{model}/samples/{concept}/{method}/{point}/seeds{seeds}",
        dino=embeddings_of("dino"),
        clip=embeddings_of("clip"),
        dino_refs="results/embeddings/dino/references/{concept}.parquet",
        clip_refs="results/embeddings/clip/references/{concept}.parquet",
        texts="results/embeddings/clip/texts/{concept}.parquet",
    output:
        "results/{model}/scores/{concept}/{method}/{point}/seeds{seeds}.parquet",
    params:
        encoders=canon({kind: encoder_id(spec) for kind, spec in ENCODERS.items()}),
        code=code_hash("metrics", "encoders", "atomic"),
    log:
        "logs/{model}/score/{concept}/{method}/{point}/seeds{seeds}.log",
    script:
        "../scripts/score.py"


rule aggregate:
    input:
        score_files,
    output:
        scores="results/{model}/tables/scores.parquet",
        table="results/{model}/tables/metrics.parquet",
        csv="results/{model}/tables/metrics.csv",
        md="results/{model}/tables/metrics.md",
        paired="results/{model}/tables/paired_vs_cfg.parquet",
        paired_csv="results/{model}/tables/paired_vs_cfg.csv",
        paired_md="results/{model}/tables/paired_vs_cfg.md",
    params:
        n_boot=EVAL["bootstrap"],
        seed=EVAL["bootstrap_seed"],
        code=code_hash("metrics", "atomic"),
    log:
        "logs/{model}/aggregate.log",
    script:
        "../scripts/aggregate.py"


rule plots:
    input:
        model_tables,
    output:
        multiext("results/plots/omega_ablation", ".png", ".svg"),
        multiext("results/plots/lambda_ablation", ".png", ".svg"),
        multiext("results/plots/pareto", ".png", ".svg"),
    params:
        models=MODELS,
        protocol=EVAL.get("plot_protocol"),
        code=code_hash("plots", "atomic"),
    log:
        "logs/plots.log",
    script:
        "../scripts/plots.py"
