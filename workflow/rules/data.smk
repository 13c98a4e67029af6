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
