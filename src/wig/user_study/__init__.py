"""The paper's user study (its Table 3) as a tool: blind sets drawn from a finished study, served to
raters in a browser, votes kept in SQLite, analysed with uncertainty.

- `wig.user_study.design`: which sets (concept, prompt, seed: one image per method from the same
  noise, and the concept's references), the attention-check repeats, each rater's order; the
  study folder the server reads (``study.json`` + opaque image ids).
- `wig.user_study.votes`: the votes database (schema in its docstring), one transaction per answer.
- `wig.user_study.analysis`: Table 3 with bootstrap CIs over raters and sets, pairwise win rates,
  attention-check consistency and the pre-stated exclusion rule.
- `wig.user_study.server`: the web app (`wig serve-study`).

Nothing here imports torch: the server starts in well under a second.
"""
