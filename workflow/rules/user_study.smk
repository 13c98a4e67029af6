# The paper's user study (Table 3): blind sets drawn from the study's samples, which
# `wig serve-study` serves to raters; once their votes are in (user_study.votes), the table.


if USER_STUDY:

    rule user_study:
        input:
            unpack(get_user_study_input),
        output:
            directory(study_path("user_study/sets")),
        log:
            study_path("logs/user_study.log"),
        localrule: True
        params:
            design=USER_STUDY,
            sample_jobs=lambda wildcards: [_job_key(w) for w in _user_study_jobs()],
            concepts=lambda wildcards: _user_study_concepts(),
        script:
            "../scripts/user_study.py"

    if config["user_study"].get("votes"):

        rule user_study_table:
            input:
                sets=rules.user_study.output[0],
                votes=config["user_study"]["votes"],
            output:
                votes=study_path("user_study/tables/votes.parquet"),
                raters=study_path("user_study/tables/raters.parquet"),
                table=study_path("user_study/tables/table3.parquet"),
                csv=report(
                    study_path("user_study/tables/table3.csv"),
                    caption="../report/user_study.rst",
                    category="User study",
                    labels={"table": "Table 3"},
                ),
                md=study_path("user_study/tables/table3.md"),
                wins=study_path("user_study/tables/win_rates.parquet"),
                figure=report(
                    study_path("user_study/table3.png"),
                    caption="../report/user_study.rst",
                    category="User study",
                    labels={"figure": "Table 3"},
                ),
                strengths=study_path("user_study/tables/strengths.parquet"),
                strength_figure=report(
                    study_path("user_study/strengths.png"),
                    caption="../report/user_study_strengths.rst",
                    category="User study",
                    labels={"figure": "Bradley–Terry strengths"},
                ),
            log:
                study_path("logs/user_study_table.log"),
            params:
                n_boot=config["user_study"]["bootstrap"],
                seed=config["user_study"]["seed"],
            script:
                "../scripts/user_study_table.py"
