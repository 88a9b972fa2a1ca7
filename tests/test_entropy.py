"""The arithmetic coder: exact round trips, near-ideal sizes, valid tables, speed."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studio.ops.entropy import (
    FrequencyTables,
    decode_symbols,
    encode_symbols,
    gaussian_tables,
    tables_from_probabilities,
)


@pytest.fixture(autouse=True)
def _studio_home(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path))


def _tables(levels: int, count: int, seed: int) -> FrequencyTables:
    rng = np.random.default_rng(seed)
    mean = rng.normal(0, 2, count)
    std = rng.uniform(0.05, 3.0, count)
    # Quantiser ranges that do not always match the model: skewed, shifted and narrow tables.
    low = mean + rng.uniform(-6, 1, count) * std
    high = low + rng.uniform(0.5, 8, count) * std
    return gaussian_tables(levels, mean, std, low, high, count=count)


@st.composite
def messages(draw):
    levels = draw(st.sampled_from([2, 3, 4, 7, 16, 255, 256, 1024, 4096]) | st.integers(2, 300))
    count = draw(st.integers(0, 48))
    seed = draw(st.integers(0, 2**32 - 1))
    style = draw(st.sampled_from(["extremes", "uniform", "constant", "mixed"]))
    rng = np.random.default_rng(seed)
    if style == "extremes":
        symbols = rng.choice([0, levels - 1], size=count)
    elif style == "uniform":
        symbols = rng.integers(0, levels, size=count)
    elif style == "constant":
        symbols = np.full(count, draw(st.sampled_from([0, levels - 1, levels // 2])))
    else:
        symbols = np.array(draw(st.lists(st.sampled_from([0, 1, levels // 2, levels - 2, levels - 1]),
                                         min_size=count, max_size=count)), dtype=np.int64).clip(0, levels - 1)
    return _tables(levels, count, seed), symbols.astype(np.int64)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_round_trip_is_exact_for_any_symbols(message):
    tables, symbols = message
    data = encode_symbols(symbols, tables)
    assert isinstance(data, bytes)
    assert not data.endswith(b"\x00")  # trailing zeros are implied
    np.testing.assert_array_equal(decode_symbols(data, tables, len(symbols)), symbols)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 400), st.integers(0, 2**32 - 1))
def test_size_is_within_one_bit_of_the_information_content(bits, count, seed):
    levels = 1 << bits
    tables = gaussian_tables(levels, 0.0, 1.0, -4.0, 4.0, count=count)
    rng = np.random.default_rng(seed)
    symbols = np.clip(np.floor((rng.standard_normal(count) + 4) * levels / 8), 0, levels - 1).astype(np.int64)
    ideal = tables.information_bits(symbols)
    data = encode_symbols(symbols, tables)
    # 1 termination bit, rounding to whole bytes, and < 1e-4 bit per symbol of integer-arithmetic loss.
    assert 8 * len(data) <= math.ceil(ideal + 1 + 1e-3 * count) + 7
    np.testing.assert_array_equal(decode_symbols(data, tables), symbols)


def test_likely_symbols_cost_less_than_unlikely_ones():
    tables = gaussian_tables(256, 0.0, 1.0, -4.0, 4.0, count=64)
    centre = encode_symbols(np.full(64, 128), tables)
    edge = encode_symbols(np.full(64, 255), tables)
    assert len(centre) < 64 * 7 / 8 < 64 * 14 / 8 < len(edge)


def test_tables_give_every_symbol_a_frequency_and_sum_to_the_total():
    tables = gaussian_tables(4096, 0.0, 1.0, -4.0, 4.0, count=3, precision=16)
    freq = np.diff(tables.cumulative, axis=1)
    assert freq.min() >= 1
    assert np.all(tables.cumulative[:, -1] == 1 << 16)
    # The discretised Gaussian: the centre bins are the most probable, near 2**16 * 8/4096 * phi(0).
    centre = freq[0, 2047:2049].mean()
    assert abs(centre - 65536 * (8 / 4096) / math.sqrt(2 * math.pi)) < 0.05 * centre


def test_elements_with_the_same_bins_in_std_units_share_one_table():
    mean = np.array([0.0, 0.3, -5.0, 2.0])
    std = np.array([1.0, 0.7, 3.0, 1.0])
    shared = gaussian_tables(16, mean, std, mean - 3.5 * std, mean + 3.5 * std)
    assert shared.cumulative.shape == (1, 17) and shared.count == 4
    distinct = gaussian_tables(16, mean, std, mean - 3.5 * std, mean + np.array([3.5, 3.5, 1.0, 2.0]) * std)
    assert len(distinct.cumulative) == 3
    assert distinct.index[0] == distinct.index[1] and len(set(distinct.index.tolist())) == 3


def test_skewed_tables_follow_their_probabilities():
    probs = np.array([[0.97, 0.01, 0.01, 0.01], [0.25, 0.25, 0.25, 0.25]])
    tables = tables_from_probabilities(probs, np.array([0, 0, 0, 0, 1]), precision=12)
    freq = np.diff(tables.cumulative, axis=1)
    assert freq[0, 0] > 0.96 * 4096 and freq[1].min() == 1024
    data = encode_symbols(np.array([0, 0, 0, 0, 3]), tables)
    assert len(data) == 1  # ~0.2 + 2 bits of information, plus termination
    np.testing.assert_array_equal(decode_symbols(data, tables), [0, 0, 0, 0, 3])


def test_bad_symbols_and_counts_are_refused():
    tables = gaussian_tables(8, 0.0, 1.0, -4.0, 4.0, count=3)
    with pytest.raises(ValueError, match="in \\[0, 7\\]"):
        encode_symbols(np.array([0, 8, 1]), tables)
    with pytest.raises(ValueError, match="in \\[0, 7\\]"):
        encode_symbols(np.array([-1, 0, 1]), tables)
    with pytest.raises(ValueError, match="expected 3 symbols"):
        encode_symbols(np.array([0, 1]), tables)
    with pytest.raises(ValueError, match="integers"):
        encode_symbols(np.array([0.0, 1.0, 2.0]), tables)
    with pytest.raises(ValueError, match="code 3 symbols"):
        decode_symbols(b"\x12", tables, 4)
    with pytest.raises(ValueError, match="precision"):
        tables_from_probabilities(np.ones((1, 300)), np.zeros(2), precision=8)
    with pytest.raises(ValueError, match="frequency >= 1"):
        FrequencyTables(np.array([[0, 0, 65536]]), np.zeros(1, dtype=np.int64), 16)


def test_empty_message():
    tables = gaussian_tables(16, 0.0, 1.0, -4.0, 4.0, count=0)
    data = encode_symbols(np.zeros(0, dtype=np.int64), tables)
    assert len(data) <= 1
    assert decode_symbols(data, tables, 0).shape == (0,)


def test_speed_mnist_batch_and_sd_latent():
    rng = np.random.default_rng(0)
    small = gaussian_tables(256, 0.0, 1.0, -4.0, 4.0, count=16)
    batch = np.clip(np.floor((rng.standard_normal((1000, 16)) + 4) * 32), 0, 255).astype(np.int64)
    t0 = time.perf_counter()
    for row in batch:
        assert np.array_equal(decode_symbols(encode_symbols(row, small), small), row)
    mnist_s = time.perf_counter() - t0
    sd_s = []
    for levels in (256, 4096):  # an SD-style 4x64x64 latent at 8 and 12 bits
        large = gaussian_tables(levels, 0.0, 1.0, -4.0, 4.0, count=4 * 64 * 64)
        latent = np.clip(np.floor((rng.standard_normal(4 * 64 * 64) + 4) * levels / 8), 0, levels - 1).astype(int)
        t0 = time.perf_counter()
        assert np.array_equal(decode_symbols(encode_symbols(latent, large), large), latent)
        sd_s.append(time.perf_counter() - t0)
    assert mnist_s < 3.0 and max(sd_s) < 1.5, (mnist_s, sd_s)
