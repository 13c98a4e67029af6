"""Bradley–Terry strengths with Davidson's ties (wig.user_study.strengths): the closed form is the
likelihood's maximum, two images are Davidson's model, and on votes simulated from known strengths
the estimates recover their order and the bootstrap intervals cover them at their nominal rate."""

import numpy as np
import polars as pl
import pytest
from scipy.optimize import minimize

from wig.user_study.analysis import vote_frame
from wig.user_study.design import UNDECIDED, UserStudy
from wig.user_study.strengths import TIE, fit_strengths, probabilities, strength_table

from conftest import make_user_study

pytestmark = pytest.mark.check

LABELS = ["CFG", "PG", "AG"]
TRUE_BETA = np.array([0.5, 0.0, -0.5])  # Σ β = 0
TRUE_LOG_NU = -0.7


def test_the_closed_form_is_the_maximum_of_the_likelihood():
    counts = np.array([41.0, 17.0, 9.0, 12.0])

    def nll(theta):
        beta = np.append(theta[:2], -theta[:2].sum())
        return -(counts * np.log(probabilities(beta, theta[2]))).sum()

    best = minimize(nll, np.zeros(3), method="BFGS", options={"gtol": 1e-10}).x
    beta, log_nu = fit_strengths(counts - 0.5)  # the closed form adds half a vote to each count
    np.testing.assert_allclose(beta[:2], best[:2], atol=1e-5)
    np.testing.assert_allclose(log_nu, best[2], atol=1e-5)


def test_two_images_are_davidsons_bradley_terry_model_with_ties():
    beta, log_nu = np.array([0.8, -0.8]), np.log(0.6)
    pi, nu = np.exp(beta), 0.6
    davidson = np.array([pi[0], pi[1], nu * np.sqrt(pi[0] * pi[1])]) / (pi.sum() + nu * np.sqrt(pi.prod()))
    np.testing.assert_allclose(probabilities(beta, log_nu), davidson, rtol=1e-12)


def _simulated_votes(study: UserStudy, raters: int, rng: np.random.Generator) -> pl.DataFrame:
    """Every rater answers every first showing, each answer drawn from the model at the true strengths
    (and the repeats as they answered the first time)."""
    p = probabilities(TRUE_BETA, TRUE_LOG_NU)
    rows = []
    for rater in range(1, raters + 1):
        for set_id, _ in study.plan(rater):
            s = study.sets[set_id]
            if s["repeat_of"]:
                continue
            by_label = {label: i for i, label in s["images"].items()}
            for question in ("subject", "text"):
                option = rng.choice(len(p), p=p)
                choice = UNDECIDED if option == len(LABELS) else by_label[LABELS[option]]
                rows.append((rater, set_id, question, choice, "t"))
    return vote_frame(study, rows)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bt") / "sets"
    return UserStudy.load(make_user_study(folder, n_sets=15, attention=0, entries={"toy/db-lora": LABELS}))


def test_strengths_recover_the_order_of_known_strengths_at_30_raters(study):
    from scipy.stats import kendalltau

    votes = _simulated_votes(study, 30, np.random.default_rng(0))
    table = strength_table(votes, study.data["entries"], n_boot=200, seed=0)
    for question in ("subject", "text"):
        part = table.filter(pl.col("question") == question)
        estimates = [part.filter(pl.col("method") == m)["strength"][0] for m in LABELS]
        assert kendalltau(estimates, TRUE_BETA).statistic == 1.0
        assert abs(sum(estimates)) < 1e-12 and part.filter(pl.col("method") == TIE)["votes"][0] > 0


def test_the_intervals_cover_the_true_strengths_at_their_nominal_rate(study):
    """100 simulated studies of 30 raters × 15 sets: each method's 95 % interval (and the tie weight's)
    covers its true value in at least 90 of them."""
    rng = np.random.default_rng(1)
    covered = np.zeros(len(LABELS) + 1)
    truth = [*TRUE_BETA, TRUE_LOG_NU]
    for k in range(100):
        table = strength_table(_simulated_votes(study, 30, rng), study.data["entries"], n_boot=300, seed=k)
        part = table.filter(pl.col("question") == "subject")
        for i, name in enumerate([*LABELS, TIE]):
            row = part.filter(pl.col("method") == name).row(0, named=True)
            covered[i] += row["lo"] <= truth[i] <= row["hi"]
    assert (covered >= 90).all(), covered
