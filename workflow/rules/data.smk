# Reference images of each concept: validated, EXIF-transposed, RGB PNGs + a Parquet manifest.


rule prepare:
    input:
        get_concept_images,
    output:
        directory(study_path("concepts/{concept}")),
    log:
        study_path("logs/prepare/{concept}.log"),
    params:
        folder=from_study(STUDY.concept_folder),
        limits={"max_pixels": config["dataset"]["max_image_pixels"], "max_side": config["dataset"]["max_image_side"]},
    script:
        "../scripts/prepare.py"


if STUDY.render:

    rule render_dataset:
        input:
            sheet=config["dataset"]["sheet"],
        output:
            directory(config["dataset"]["root"]),
        log:
            study_path("logs/render_dataset.log"),
        benchmark:
            study_path("benchmarks/render_dataset.tsv")
        params:
            render=canon(STUDY.render),
        script:
            "../scripts/render_dataset.py"

elif config["dataset"].get("root"):  # a prompt set has no image root to fetch

    rule fetch_dataset:
        output:
            directory(config["dataset"]["root"]),
        log:
            study_path("logs/fetch_dataset.log"),
        localrule: True
        params:
            fetch=canon(config["dataset"].get("fetch", {})),
        script:
            "../scripts/fetch_dataset.py"
