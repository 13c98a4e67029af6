# Embeddings (Parquet): references once per (concept, encoder), prompt texts once per (concept,
# text encoder: CLIP, PickScore), samples once per (generation job, encoder). Protocols share one job: an image is decoded
# once and encoded once per protocol. Changing an encoder re-embeds; it never regenerates.


rule build_tiny_encoder:
    output:
        directory(study_path("encoders/{encoder}")),
    log:
        study_path("logs/build_tiny_encoder/{encoder}.log"),
    wildcard_constraints:
        encoder=_names([k for k, s in ENCODERS.items() if s.get("tiny")]),
    params:
        spec=from_study(STUDY.encoder_spec),
    script:
        "../scripts/build_tiny_encoder.py"


# The synthetic world's learned DINO stand-in (wig.synthetic.encoder), trained on rendered scenes.
rule train_encoder:
    output:
        directory(study_path("encoders/{encoder}")),
    log:
        study_path("logs/train_encoder/{encoder}.log"),
    benchmark:
        study_path("benchmarks/train_encoder/{encoder}.tsv")
    wildcard_constraints:
        encoder=_names(STUDY.trained_encoders()),
    threads: 2
    params:
        spec=from_study(STUDY.encoder_spec),
    script:
        "../scripts/train_encoder.py"


rule embed_references:
    input:
        unpack(get_encoder),
        images=rules.prepare.output[0],
    output:
        study_path("embeddings/{encoder}/references/{concept}.parquet"),
    log:
        study_path("logs/embed_references/{encoder}/{concept}.log"),
    threads: config["runtime"]["threads"]
    resources:
        gpu=1,
    params:
        spec=from_study(STUDY.encoder_spec),
        protocols=EVAL["protocols"],
        batch_size=EVAL["batch_size"],
        runtime=RUNTIME,
    script:
        "../scripts/embed_images.py"


rule embed_texts:
    input:
        unpack(get_encoder),
    output:
        study_path("embeddings/{encoder}/texts/{concept}.parquet"),
    log:
        study_path("logs/embed_texts/{encoder}/{concept}.log"),
    wildcard_constraints:
        encoder=_names(STUDY.text_encoders()),
    threads: config["runtime"]["threads"]
    resources:
        gpu=1,
    params:
        spec=from_study(STUDY.encoder_spec),
        texts=from_study(STUDY.metric_texts),
        runtime=RUNTIME,
    script:
        "../scripts/embed_texts.py"


rule embed_samples:
    input:
        unpack(get_encoder),
        images=rules.generate.output[0],
    output:
        study_path("{model}/{finetune}/embeddings/{encoder}/{concept}/ft{fseed}/{points}/seeds{seeds}.parquet"),
    log:
        study_path("logs/{model}/{finetune}/embed_samples/{encoder}/{concept}/ft{fseed}/{points}/seeds{seeds}.log"),
    benchmark:
        study_path(
            "{model}/{finetune}/benchmarks/embed_samples/{encoder}/{concept}/ft{fseed}/{points}/seeds{seeds}.tsv"
        )
    threads: config["runtime"]["threads"]
    resources:
        gpu=1,
    params:
        spec=from_study(STUDY.encoder_spec),
        protocols=EVAL["protocols"],
        batch_size=EVAL["batch_size"],
        runtime=RUNTIME,
    script:
        "../scripts/embed_images.py"
