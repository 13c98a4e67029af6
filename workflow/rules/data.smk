# Reference images of each concept: validated, EXIF-transposed, RGB PNGs + a Parquet manifest.


rule prepare:
    input:
        concept_images,
    output:
        directory("results/concepts/{concept}"),
    params:
        folder=concept_folder,
        code=code_hash("concepts", "atomic"),
    log:
        "logs/prepare/{concept}.log",
    script:
        "../scripts/prepare.py"


if RENDER:

    rule render_dataset:
        output:
            directory(config["dataset"]["root"]),
        params:
            render=canon(RENDER),
            code=code_hash("synthetic"),
        log:
            "logs/render_dataset.log",
        benchmark:
            "results/benchmarks/render_dataset.tsv"
        script:
            "../scripts/render_dataset.py"

else:

    rule fetch_dataset:
        output:
            directory(config["dataset"]["root"]),
        params:
            fetch=canon(config["dataset"].get("fetch", {})),
        log:
            "logs/fetch_dataset.log",
        localrule: True
        script:
            "../scripts/fetch_dataset.py"
