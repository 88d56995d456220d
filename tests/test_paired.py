"""Seed-paired differences: the t interval against a hand computation and a t table."""

import math

import pytest

from facekd.evaluate.paired import mean_and_std, paired_difference

T_975_2 = 4.302652729911275  # Student's t, 97.5th percentile, 2 degrees of freedom (table value)


def test_paired_interval_by_hand():
    method, baseline = [0.91, 0.93, 0.92], [0.90, 0.90, 0.91]
    # differences 0.01, 0.03, 0.01: mean 0.05/3, sd = sqrt(((0.01-m)^2*2 + (0.03-m)^2) / 2)
    m = 0.05 / 3
    sd = math.sqrt((2 * (0.01 - m) ** 2 + (0.03 - m) ** 2) / 2)
    half = T_975_2 * sd / math.sqrt(3)
    result = paired_difference(method, baseline)
    assert result.mean == pytest.approx(m)
    assert (result.low, result.high) == pytest.approx((m - half, m + half))
    assert result.pairs == 3 and not result.resolved  # m - half < 0: the interval holds zero


def test_paired_interval_resolves_a_consistent_gain_and_loss():
    gain = paired_difference([0.95, 0.96, 0.97], [0.90, 0.91, 0.92])  # every seed +0.05, sd 0
    assert gain.low == pytest.approx(0.05) and gain.high == pytest.approx(0.05) and gain.resolved
    loss = paired_difference([0.80, 0.81, 0.79], [0.90, 0.90, 0.90])
    assert loss.high < 0 and loss.resolved


def test_pairing_is_by_seed_not_by_sorted_value():
    # Unpaired means differ by 0 here, but each seed gains 0.02: pairing must see the gain.
    result = paired_difference([0.92, 0.82, 0.72], [0.90, 0.80, 0.70])
    assert result.mean == pytest.approx(0.02) and result.resolved


def test_single_seed_has_no_interval_and_bad_input_is_refused():
    single = paired_difference([0.9], [0.8])
    assert single.mean == pytest.approx(0.1) and math.isnan(single.low) and not single.resolved
    with pytest.raises(ValueError, match="equal"):
        paired_difference([0.9, 0.8], [0.8])
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([0.9, 0.8], [0.8, 0.7], confidence=1.0)


def test_mean_and_sample_std():
    assert mean_and_std([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)))
    assert mean_and_std([0.5]) == (0.5, 0.0)


def test_std_interval_factors_against_a_chi_square_table():
    from facekd.evaluate.paired import std_interval_factors

    # chi-square quantiles, df = 2: 0.0506 and 7.3778; df = 7: 1.6899 and 16.0128
    low, high = std_interval_factors(3)
    assert low == pytest.approx(math.sqrt(2 / 7.3778), rel=1e-4) and high == pytest.approx(math.sqrt(2 / 0.0506), rel=1e-3)
    low, high = std_interval_factors(8)
    assert low == pytest.approx(math.sqrt(7 / 16.0128), rel=1e-4) and high == pytest.approx(math.sqrt(7 / 1.6899), rel=1e-4)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        std_interval_factors(1)
