# Scores per generation job, then per model: tables with bootstrap CIs, paired comparisons
# against CFG; figures across models.


rule score:
    input:
        unpack(get_score_input),
    output:
        "results/{model}/scores/{concept}/lora{lseed}/{points}/seeds{seeds}.parquet",
    log:
        "logs/{model}/score/{concept}/lora{lseed}/{points}/seeds{seeds}.log",
    benchmark:
        "results/{model}/benchmarks/score/{concept}/lora{lseed}/{points}/seeds{seeds}.tsv"
    params:
        encoders=STUDY.encoder_ids(),
        metrics=list(STUDY.metrics),
    script:
        "../scripts/score.py"


rule aggregate:
    input:
        get_score_files,
    output:
        scores="results/{model}/tables/scores.parquet",
        table="results/{model}/tables/metrics.parquet",
        csv=report(
            "results/{model}/tables/metrics.csv",
            caption="../report/metrics.rst",
            category="Tables",
            labels={"model": "{model}", "table": "metrics"},
        ),
        md="results/{model}/tables/metrics.md",
        paired="results/{model}/tables/paired_vs_cfg.parquet",
        paired_csv=report(
            "results/{model}/tables/paired_vs_cfg.csv",
            caption="../report/paired.rst",
            category="Tables",
            labels={"model": "{model}", "table": "paired vs CFG"},
        ),
        paired_md="results/{model}/tables/paired_vs_cfg.md",
        matched="results/{model}/tables/matched_text.parquet",
        matched_md="results/{model}/tables/matched_text.md",
    log:
        "logs/{model}/aggregate.log",
    benchmark:
        "results/{model}/benchmarks/aggregate.tsv"
    params:
        n_boot=EVAL["bootstrap"],
        seed=EVAL["bootstrap_seed"],
    script:
        "../scripts/aggregate.py"


rule plots:
    input:
        expand(rules.aggregate.output.table, model=MODELS),
    output:
        report(
            "results/plots/omega_ablation.png",
            caption="../report/omega.rst",
            category="Figures",
            labels={"figure": "ω-ablation"},
        ),
        report(
            "results/plots/lambda_ablation.png",
            caption="../report/lambda.rst",
            category="Figures",
            labels={"figure": "λ-ablation"},
        ),
        report(
            "results/plots/pareto.png",
            caption="../report/pareto.rst",
            category="Figures",
            labels={"figure": "Pareto front"},
        ),
        "results/plots/omega_ablation.svg",
        "results/plots/lambda_ablation.svg",
        "results/plots/pareto.svg",
    log:
        "logs/plots.log",
    params:
        models=MODELS,
        protocol=EVAL.get("plot_protocol"),
    script:
        "../scripts/plots.py"
