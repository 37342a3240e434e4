"""Fitting the reading limits: chosen by measured error rates, within the phantom budget."""

from __future__ import annotations

from tools.calibrate_reading import Sample, fit, rates


def _sample(source: str, right: bool, fill: float, probability: float = 0.98) -> Sample:
    checks = {"body_fill": fill, "body_probability": probability, "level_ambiguity": 0.0, "body_area_ratio": 1.3}
    return Sample(source, f"{source}-{fill}", right, checks)


def test_limits_catch_wrong_films_and_keep_the_phantom_within_budget() -> None:
    phantom = [_sample("phantom", True, 0.6 + 0.003 * i) for i in range(100)] + [_sample("phantom", True, 0.25)]
    wrong = [_sample("real", False, 0.05 + 0.01 * i) for i in range(20)]  # fragments: fill 0.05..0.24
    right = [_sample("real", True, 0.5), _sample("real", True, 0.45)]
    no_spine = [Sample("real", "none", False, {})]  # indeterminate whatever the limits
    samples = phantom + wrong + right + no_spine
    limits, r = fit(samples, phantom_budget=0.02, min_caught=0.99)
    assert 0.24 < limits.min_body_fill <= 0.45  # above every fragment, below every right film
    assert r["real_wrong_caught"] == 1.0 and r["real_right_unreadable"] == 0.0
    assert r["phantom_unreadable"] <= 0.02
    assert rates(samples, limits) == r
    strict, strict_rates = fit(samples, phantom_budget=0.0, min_caught=0.99)  # no phantom image may be lost
    assert strict.min_body_fill <= 0.25 and strict_rates["phantom_unreadable"] == 0.0
    assert strict_rates["real_wrong_caught"] < 1.0  # the fragment at 0.24 now gets through, and it says so
