"""Delay keys for the analysis (pipeline/analysis/stats.delay_buckets): a few delays keep their values,
many are binned into five right-closed quantile bins labelled "(lo, hi]", as polars' `cut` binned
them, without the deprecated `cut` itself."""
import warnings

import numpy as np
import polars as pl

from pipeline.analysis.stats import delay_buckets


def _keys(values: list[float]) -> list[str]:
    df = pl.DataFrame({"delay_ms": values})
    return df.select(delay_buckets(df["delay_ms"])).to_series().to_list()


def test_a_few_distinct_delays_keep_their_values():
    assert _keys([10.0, 50.04, 10.0, 150.0]) == [10.0, 50.0, 10.0, 150.0]


def test_many_delays_fall_in_five_right_closed_quantile_bins():
    values = [float(i) for i in np.random.default_rng(0).permutation(101)]  # quantiles 20, 40, 60, 80 exactly
    keys = _keys(values)
    labels = ["(-inf, 20.0]", "(20.0, 40.0]", "(40.0, 60.0]", "(60.0, 80.0]", "(80.0, inf]"]
    assert set(keys) == set(labels)
    for v, k in zip(values, keys):
        assert k == labels[min(4, max(0, int(np.ceil(v / 20.0)) - 1))], v  # an edge closes its bin: 20.0 in the first


def test_binning_raises_no_deprecation_warning():
    values = np.random.default_rng(1).uniform(0, 200, 100).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _keys(values)
