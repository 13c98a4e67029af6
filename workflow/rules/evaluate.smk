# Scores per generation job, then per (model, fine-tune): tables with bootstrap CIs, paired
# comparisons against CFG; figures across them.


rule score:
    input:
        unpack(get_score_input),
    output:
        study_path("{model}/{finetune}/scores/{concept}/ft{fseed}/{points}/seeds{seeds}.parquet"),
    log:
        study_path("logs/{model}/{finetune}/score/{concept}/ft{fseed}/{points}/seeds{seeds}.log"),
    benchmark:
        study_path("{model}/{finetune}/benchmarks/score/{concept}/ft{fseed}/{points}/seeds{seeds}.tsv")
    params:
        encoders=STUDY.encoder_ids(),
        metrics=list(STUDY.metrics),
    script:
        "../scripts/score.py"


rule aggregate:
    input:
        get_score_files,
    output:
        scores=study_path("{model}/{finetune}/tables/scores.parquet"),
        table=study_path("{model}/{finetune}/tables/metrics.parquet"),
        csv=report(
            study_path("{model}/{finetune}/tables/metrics.csv"),
            caption="../report/metrics.rst",
            category="Tables",
            labels={"model": "{model}", "fine-tune": "{finetune}", "table": "metrics"},
        ),
        md=study_path("{model}/{finetune}/tables/metrics.md"),
        paired=study_path("{model}/{finetune}/tables/paired_vs_cfg.parquet"),
        paired_csv=report(
            study_path("{model}/{finetune}/tables/paired_vs_cfg.csv"),
            caption="../report/paired.rst",
            category="Tables",
            labels={"model": "{model}", "fine-tune": "{finetune}", "table": "paired vs CFG"},
        ),
        paired_md=study_path("{model}/{finetune}/tables/paired_vs_cfg.md"),
        matched=study_path("{model}/{finetune}/tables/matched_text.parquet"),
        matched_md=study_path("{model}/{finetune}/tables/matched_text.md"),
        agreement=study_path("{model}/{finetune}/tables/metric_agreement.parquet"),
        agreement_md=study_path("{model}/{finetune}/tables/metric_agreement.md"),
    log:
        study_path("logs/{model}/{finetune}/aggregate.log"),
    benchmark:
        study_path("{model}/{finetune}/benchmarks/aggregate.tsv")
    params:
        n_boot=EVAL["bootstrap"],
        seed=EVAL["bootstrap_seed"],
    script:
        "../scripts/aggregate.py"


# Synthetic world: did each LoRA learn its subject? Its training captions with and without it.
rule learning:
    input:
        unpack(get_learning_input),
    output:
        images=study_path("{model}/{finetune}/tables/learning_images.parquet"),
        table=study_path("{model}/{finetune}/tables/learning.parquet"),
        md=study_path("{model}/{finetune}/tables/learning.md"),
    log:
        study_path("logs/{model}/{finetune}/learning.log"),
    benchmark:
        study_path("{model}/{finetune}/benchmarks/learning.tsv")
    threads: 2
    params:
        model=get_model_ref,
        method=from_study(STUDY.finetune_settings),
        settings=from_study(STUDY.learning_settings),
        sampling=SAMPLING,
        runtime=RUNTIME,
    script:
        "../scripts/learning.py"


rule finetune_table:
    input:
        [expand(rules.aggregate.output.table, model=m, finetune=f)[0] for m, f in FINETUNES],
    output:
        table=study_path("tables/finetunes.parquet"),
        csv=report(
            study_path("tables/finetunes.csv"),
            caption="../report/finetunes.rst",
            category="Tables",
            labels={"table": "fine-tunes"},
        ),
        md=study_path("tables/finetunes.md"),
    log:
        study_path("logs/finetune_table.log"),
    params:
        finetunes=[[m, f] for m, f in FINETUNES],
        settings={f"{m}/{f}": STUDY.finetune_settings(m, f) for m, f in FINETUNES},
        families={m: STUDY.models[m].family for m in sorted({m for m, _ in FINETUNES})},
    script:
        "../scripts/finetune_table.py"


rule plots:
    input:
        [expand(rules.aggregate.output.table, model=m, finetune=f)[0] for m, f in FINETUNES],
    output:
        report(
            study_path("plots/omega_ablation.png"),
            caption="../report/omega.rst",
            category="Figures",
            labels={"figure": "ω-ablation"},
        ),
        report(
            study_path("plots/lambda_ablation.png"),
            caption="../report/lambda.rst",
            category="Figures",
            labels={"figure": "λ-ablation"},
        ),
        report(
            study_path("plots/pareto.png"),
            caption="../report/pareto.rst",
            category="Figures",
            labels={"figure": "Pareto front"},
        ),
        report(
            study_path("plots/method_fronts.png"),
            caption="../report/method_fronts.rst",
            category="Figures",
            labels={"figure": "method fronts"},
        ),
        study_path("plots/omega_ablation.svg"),
        study_path("plots/lambda_ablation.svg"),
        study_path("plots/pareto.svg"),
        study_path("plots/method_fronts.svg"),
    log:
        study_path("logs/plots.log"),
    params:
        labels=[f"{m}/{f}" for m, f in FINETUNES],
        protocol=EVAL.get("plot_protocol"),
    script:
        "../scripts/plots.py"
