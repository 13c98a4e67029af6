# Personalization: class images per (model, class noun); one fine-tune run per (model, fine-tune,
# concept, seed) with the method its `personalization:` entry names (wig.personalization), or,
# with `jobs: {subjects_per_job: K}`, one job per pack of ≈ K runs trained in one forward (rule train_<pack>).


rule class_images:
    input:
        unpack(get_model),
    output:
        directory(study_path("{model}/class_images/{noun}")),
    log:
        study_path("logs/{model}/class_images/{noun}.log"),
    benchmark:
        study_path("{model}/benchmarks/class_images/{noun}.tsv")
    threads: config["runtime"]["threads"]
    resources:
        gpu=1,
    params:
        model=get_model_ref,
        settings=from_study(STUDY.class_image_settings),
        runtime=RUNTIME,
    script:
        "../scripts/class_images.py"


rule train:
    input:
        unpack(get_train_input),
    output:
        directory(study_path("{model}/{finetune}/runs/{concept}/ft{fseed}")),
    log:
        study_path("logs/{model}/{finetune}/train/{concept}/ft{fseed}.log"),
    benchmark:
        study_path("{model}/{finetune}/benchmarks/train/{concept}/ft{fseed}.tsv")
    wildcard_constraints:
        finetune=finetunes_where(lambda m, ft: not STUDY.packed(m, ft)),
    threads: config["runtime"]["threads"]
    resources:
        gpu=1,
    params:
        model=get_model_ref,
        method=from_study(STUDY.finetune_settings),
        subject=from_study(STUDY.subject_prompts),
        runtime=RUNTIME,
    script:
        "../scripts/train.py"


for _pack in STUDY.training_packs():
    share_resources(_pack.rule, "train")

    rule:
        name:
            _pack.rule
        input:
            unpack(lambda wildcards, pack=_pack: get_pack_input(pack)),
        output:
            [directory(_path(rules.train, run.wildcards)) for run in _pack.runs],
        log:
            study_path(f"logs/{_pack.model}/{_pack.finetune}/train/pack{_pack.index}.log"),
        benchmark:
            study_path(f"{_pack.model}/{_pack.finetune}/benchmarks/train/pack{_pack.index}.tsv")
        threads: config["runtime"]["threads"]
        resources:
            gpu=1,
        params:
            model=lambda wildcards, input, pack=_pack: STUDY.models[pack.model].root_spec.get("path") or input.model,
            pack=get_pack_params(_pack),
            runtime=RUNTIME,
        script:
            "../scripts/train_pack.py"
