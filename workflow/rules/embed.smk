# Embeddings (Parquet): references once per (concept, encoder), prompt texts once per (concept,
# CLIP), samples once per (generation job, encoder). Protocols share one job: an image is decoded
# once and encoded once per protocol. Changing an encoder re-embeds; it never regenerates.


rule build_tiny_encoder:
    output:
        directory("results/encoders/{encoder}"),
    params:
        spec=from_study(STUDY.encoder_spec),
    log:
        "logs/build_tiny_encoder/{encoder}.log",
    script:
        "../scripts/build_tiny_encoder.py"


rule embed_references:
    input:
        unpack(get_encoder),
        images="results/concepts/{concept}",
    output:
        "results/embeddings/{encoder}/references/{concept}.parquet",
    params:
        spec=from_study(STUDY.encoder_spec),
        protocols=EVAL["protocols"],
        batch_size=EVAL["batch_size"],
        runtime=RUNTIME,
    log:
        "logs/embed_references/{encoder}/{concept}.log",
    threads: config["runtime"]["threads"]
    resources:
        gpu=1,
    script:
        "../scripts/embed.py"


rule embed_texts:
    input:
        unpack(get_encoder),
    output:
        "results/embeddings/{encoder}/texts/{concept}.parquet",
    params:
        spec=from_study(STUDY.encoder_spec),
        texts=from_study(STUDY.clip_texts),
        runtime=RUNTIME,
    log:
        "logs/embed_texts/{encoder}/{concept}.log",
    threads: config["runtime"]["threads"]
    resources:
        gpu=1,
    wildcard_constraints:
        encoder="clip",
    script:
        "../scripts/embed.py"


rule embed_samples:
    input:
        unpack(get_encoder),
        images="results/{model}/samples/{concept}/lora{lseed}/{points}/seeds{seeds}",
    output:
        "results/{model}/embeddings/{encoder}/{concept}/lora{lseed}/{points}/seeds{seeds}.parquet",
    params:
        spec=from_study(STUDY.encoder_spec),
        protocols=EVAL["protocols"],
        batch_size=EVAL["batch_size"],
        runtime=RUNTIME,
    log:
        "logs/{model}/embed_samples/{encoder}/{concept}/lora{lseed}/{points}/seeds{seeds}.log",
    benchmark:
        "results/{model}/benchmarks/embed_samples/{encoder}/{concept}/lora{lseed}/{points}/seeds{seeds}.tsv"
    threads: config["runtime"]["threads"]
    resources:
        gpu=1,
    script:
        "../scripts/embed.py"
