# Generation: one job per (model, fine-tune, concept, its seed, chunk of grid points, chunk of
# seeds); all of the concept's prompts batched; one model load — or, for a fine-tune trained in
# packs whose points allow it (Study.generation_packed), one job per (pack, points chunk, seeds
# chunk), its runs' samples sharing batches (rule generate_<pack>). Then a same-seed image grid
# per (model, fine-tune, concept).


rule generate:
    input:
        unpack(get_generate_input),
    output:
        directory(study_path("{model}/{finetune}/samples/{concept}/ft{fseed}/{points}/seeds{seeds}")),
    log:
        study_path("logs/{model}/{finetune}/generate/{concept}/ft{fseed}/{points}/seeds{seeds}.log"),
    benchmark:
        study_path("{model}/{finetune}/benchmarks/generate/{concept}/ft{fseed}/{points}/seeds{seeds}.tsv")
    wildcard_constraints:
        finetune=finetunes_where(lambda m, ft: not STUDY.generation_packed(m, ft)),
    threads: config["runtime"]["threads"]
    resources:
        gpu=1,
    params:
        model=get_model_ref,
        method=from_study(STUDY.finetune_settings),
        guidance=from_study(STUDY.guidance_of),
        prompts=from_study(STUDY.concept_prompts),
        extra_texts=from_study(STUDY.extra_texts_of),
        sampling=SAMPLING,
        runtime=RUNTIME,
    script:
        "../scripts/generate.py"


for _pack in STUDY.generation_packs():
    share_resources(_pack.generate_rule, "generate")

    rule:
        name:
            _pack.generate_rule
        input:
            unpack(lambda wildcards, pack=_pack: get_generate_pack_input(pack)),
        output:
            [directory(_path(rules.generate, run.wildcards, points="{points}", seeds="{seeds}")) for run in _pack.runs],
        log:
            study_path(f"logs/{_pack.model}/{_pack.finetune}/generate/pack{_pack.index}/{{points}}/seeds{{seeds}}.log"),
        benchmark:
            study_path(
                f"{_pack.model}/{_pack.finetune}/benchmarks/generate/pack{_pack.index}/{{points}}/seeds{{seeds}}.tsv"
            )
        threads: config["runtime"]["threads"]
        resources:
            gpu=1,
        params:
            model=lambda wildcards, input, pack=_pack: STUDY.models[pack.model].root_spec.get("path") or input.model,
            method=STUDY.finetune_settings(_pack.model, _pack.finetune),
            guidance=lambda wildcards, pack=_pack: STUDY.guidance_of(pack.model, wildcards.points),
            runs=lambda wildcards, pack=_pack: get_generate_pack_runs(pack, wildcards.points),
            sampling=SAMPLING,
            runtime=RUNTIME,
        script:
            "../scripts/generate_pack.py"


rule grid:
    input:
        get_grid_samples,
    output:
        report(
            study_path("{model}/{finetune}/grids/{concept}.png"),
            caption="../report/grid.rst",
            category="Image grids",
            labels={"model": "{model}", "fine-tune": "{finetune}", "concept": "{concept}"},
        ),
    log:
        study_path("logs/{model}/{finetune}/grid/{concept}.log"),
    params:
        layout=from_study(STUDY.grid_layout),
    script:
        "../scripts/grid.py"
