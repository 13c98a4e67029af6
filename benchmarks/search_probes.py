"""Probes of the golden-section search (wig.workflow.search) against an exhaustive grid of the same
resolution over the same bracket — what a search of λ or ω costs in generation jobs.

    python benchmarks/search_probes.py

Prints, per bracket and objective shape, the probes the search asks for, the grid's point count,
their ratio, and how far the chosen value lies from the true maximiser.
"""

import math

from wig.workflow.search import SearchSettings, golden_section

SHAPES = {
    "peak inside": lambda m: lambda x: -((x - m) ** 2),
    "rising to the edge": lambda m: lambda x: x,
    "plateau from m": lambda m: lambda x: min(x, m),
}


def main() -> None:
    cases = [
        ("λ in [−10, 10]", SearchSettings(-10.0, 10.0, 0.1, 0.05, 100), 3.3),
        ("λ in [1, 15]", SearchSettings(1.0, 15.0, 0.1, 0.05, 100), 7.3),
        ("ω in [0, 1]", SearchSettings(0.0, 1.0, 0.05, 0.05, 100), 0.35),
    ]
    print(f"{'bracket':16s} {'objective':20s} {'probes':>6s} {'grid':>5s} {'ratio':>6s} {'|x − x*|':>9s}")
    for label, s, m in cases:
        grid = round((s.hi - s.lo) / s.resolution) + 1
        expected = math.log((s.hi - s.lo) / s.tolerance) / math.log((1 + math.sqrt(5)) / 2)
        for shape, make in SHAPES.items():
            f = make(m)
            x, trace = golden_section(f, s)
            truth = {"peak inside": m, "rising to the edge": s.hi, "plateau from m": None}[shape]
            error = abs(x - truth) if truth is not None else (0.0 if f(x) == f(s.hi) else float("nan"))
            print(f"{label:16s} {shape:20s} {len(trace):6d} {grid:5d} {grid / len(trace):6.1f} {error:9.3f}")
        print(f"{'':16s} (golden section: ≈ log(bracket / tolerance) / log φ = {expected:.1f} shrinks + 1)")


if __name__ == "__main__":
    main()
