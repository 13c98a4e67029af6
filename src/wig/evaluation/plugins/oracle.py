"""The synthetic world's oracle as two pixel metrics, ``oracle_text`` and ``oracle_subject``
(`wig.synthetic.oracle`: the renderer's own segmentation reads the caption's attributes and the
subject's off each image). They read pixels, not embeddings, and only the world's rendered
images (``synthetic_only``: a study scores them where ``dataset.render`` is set).
"""

from __future__ import annotations

from wig.evaluation.base import Metric, register_metric


def _oracle(images, prompts, concept):
    from wig.synthetic.oracle import score_images

    scores = score_images(images, prompts, concept)
    return {name: scores[side] for name, side in (("oracle_text", "text"), ("oracle_subject", "subject"))}


# one call serves both (the oracle segments an image once for both of its metrics); its subject
# fidelity is the ground truth the embedding metrics are checked against (`metric_agreement`)
register_metric(Metric("oracle_text", "oracle text fidelity", "text", "pixels", _oracle, synthetic_only=True, order=70))
register_metric(
    Metric(
        "oracle_subject",
        "oracle subject fidelity",
        "subject",
        "pixels",
        _oracle,
        synthetic_only=True,
        ground_truth=True,
        order=80,
    )
)
