# Golden-section searches of one guidance parameter (wig.workflow.search), per (model, fine-tune):
# a checkpoint per probe — step k reads step k−1's state and the scores of the probe it asked for,
# an ordinary grid point's generation, embeddings and scores — so the DAG grows one probe at a time
# and a rerun reuses every probe whose value it asks for again.


checkpoint search_step:
    input:
        unpack(get_search_step_input),
    output:
        study_path("{model}/{finetune}/search/{search}/step{k}.json"),
    log:
        study_path("logs/{model}/{finetune}/search/{search}/step{k}.log"),
    params:
        search=from_study(STUDY.search_settings),
        split=STUDY.selection,
    script:
        "../scripts/search_step.py"


rule search:
    input:
        unpack(get_search_result_input),
    output:
        trace=study_path("{model}/{finetune}/search/{search}/trace.parquet"),
        chosen=study_path("{model}/{finetune}/search/{search}/chosen.parquet"),
        md=study_path("{model}/{finetune}/search/{search}/chosen.md"),
        plot=report(
            study_path("{model}/{finetune}/search/{search}/trace.png"),
            caption="../report/search.rst",
            category="Searches",
            labels={"model": "{model}", "fine-tune": "{finetune}", "search": "{search}"},
        ),
        svg=study_path("{model}/{finetune}/search/{search}/trace.svg"),
    log:
        study_path("logs/{model}/{finetune}/search/{search}/search.log"),
    params:
        search=from_study(STUDY.search_settings),
    script:
        "../scripts/search.py"
