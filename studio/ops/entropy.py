"""Entropy coding of integer symbols to bytes with static per-element frequency tables (pure Python + numpy).

The coder is the integer arithmetic coder of Witten, Neal and Cleary (1987): 32-bit `low`/`high` registers,
bit-wise renormalisation and pending ("underflow") bits. Every table's frequencies sum to 2**precision, so
splitting the interval is a multiply and a shift. Both sides hold the same tables, so a payload carries
nothing but the code bits: no header, no length, no model.

Termination: the decoder reads zeros past the end of the data, so the encoder ends with the shortest code
point in the final interval (a single 1 bit at most) and drops trailing zero bytes. A payload costs at
most the symbols' information content plus 1 bit, rounded up to whole bytes (plus under 1e-4 bit per
symbol lost to integer arithmetic).

A corrupt payload does not raise: it decodes to some symbols of the right count.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

CODE_BITS = 32
TOP = (1 << CODE_BITS) - 1
HALF = 1 << (CODE_BITS - 1)
QUARTER = 1 << (CODE_BITS - 2)
THREE_QUARTERS = HALF + QUARTER
DEFAULT_PRECISION = 16  # frequencies sum to 2**16; a symbol costs at most 16 bits


@dataclass(frozen=True, eq=False)
class FrequencyTables:
    """Static integer frequency tables, shared between elements.

    `cumulative[k]` is table k's cumulative frequencies (levels + 1 entries, 0 first, 2**precision last,
    strictly increasing: every symbol has frequency >= 1). `index[d]` is the table of element d, so
    thousands of elements with the same model cost one table.
    """

    cumulative: np.ndarray  # (K, levels + 1) int64
    index: np.ndarray  # (D,) int64 in [0, K)
    precision: int

    def __post_init__(self) -> None:
        cum, idx = self.cumulative, self.index
        if cum.ndim != 2 or cum.shape[1] < 2 or idx.ndim != 1:
            raise ValueError("cumulative must be (K, levels + 1) and index (D,)")
        if not (np.all(cum[:, 0] == 0) and np.all(cum[:, -1] == 1 << self.precision) and np.all(np.diff(cum) >= 1)):
            raise ValueError("each table must start at 0, end at 2**precision and give every symbol frequency >= 1")
        if idx.size and (idx.min() < 0 or idx.max() >= len(cum)):
            raise ValueError("index refers to a table that does not exist")
        if self.precision > CODE_BITS - 2:
            raise ValueError(f"precision must be at most {CODE_BITS - 2} bits")

    @property
    def levels(self) -> int:
        """Number of symbols each table codes (0 .. levels - 1)."""
        return self.cumulative.shape[1] - 1

    @property
    def count(self) -> int:
        """Number of elements (symbols per message)."""
        return len(self.index)

    def information_bits(self, symbols: np.ndarray) -> float:
        """The ideal code length of `symbols` under these tables, in bits (sum of -log2 p)."""
        sym = self._checked(symbols)
        freq = self.cumulative[self.index, sym + 1] - self.cumulative[self.index, sym]
        return float(self.precision * len(sym) - np.log2(freq).sum())

    def _checked(self, symbols: np.ndarray) -> np.ndarray:
        sym = np.asarray(symbols).reshape(-1)
        if sym.size != self.count:
            raise ValueError(f"expected {self.count} symbols, got {sym.size}")
        if sym.size and not np.issubdtype(sym.dtype, np.integer):
            raise ValueError(f"symbols must be integers, got dtype {sym.dtype}")
        sym = sym.astype(np.int64)
        if sym.size and (sym.min() < 0 or sym.max() >= self.levels):
            raise ValueError(f"symbols must lie in [0, {self.levels - 1}]")
        return sym


def tables_from_probabilities(probs: np.ndarray, index: np.ndarray, precision: int = DEFAULT_PRECISION
                              ) -> FrequencyTables:
    """Integer tables from probabilities (K, levels): each symbol gets 1 plus its share of the rest.

    Rounding is by largest remainder, so every table sums to exactly 2**precision.
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, None)
    if p.ndim != 2:
        raise ValueError("probs must be (K, levels)")
    total, levels = 1 << precision, p.shape[1]
    if levels >= total:
        raise ValueError(f"{levels} symbols need a precision above {precision} bits")
    sums = p.sum(1, keepdims=True)
    p = np.where(sums > 0, p / np.where(sums > 0, sums, 1.0), 1.0 / levels)
    share = p * (total - levels)
    freq = 1 + np.floor(share).astype(np.int64)
    # Largest remainders: the symbols that lost most to rounding get the units left over (fewer than levels).
    deficit = total - freq.sum(1, keepdims=True)
    rank = np.argsort(np.argsort(np.floor(share) - share, axis=1, kind="stable"), axis=1, kind="stable")
    freq += rank < deficit
    freq[np.arange(len(p)), p.argmax(1)] += total - freq.sum(1)  # float slack, if any, on the likeliest
    cumulative = np.zeros((len(p), levels + 1), dtype=np.int64)
    np.cumsum(freq, axis=1, out=cumulative[:, 1:])
    return FrequencyTables(cumulative, np.asarray(index, dtype=np.int64).reshape(-1), precision)


def gaussian_tables(levels: int, mean: np.ndarray | float, std: np.ndarray | float, low: np.ndarray | float,
                    high: np.ndarray | float, count: int | None = None, precision: int = DEFAULT_PRECISION
                    ) -> FrequencyTables:
    """Tables for a uniform quantiser with `levels` bins over [low, high] per element, under N(mean, std).

    The outer bins also take the tails (values are clipped into them). Arguments broadcast to (D,) (to
    `count` when given). Elements whose bins are the same in their own standard units share one table,
    so a quantiser defined in std units (the usual case) builds a single table however large D is.
    """
    from scipy.special import ndtr

    arrays = [np.asarray(x, dtype=np.float64).reshape(-1) for x in (mean, std, low, high)]
    shape = (count,) if count is not None else np.broadcast_shapes(*(a.shape for a in arrays))
    mean_, std_, low_, high_ = (np.broadcast_to(a, shape) for a in arrays)
    if np.any(std_ <= 0) or np.any(high_ <= low_) or not all(np.all(np.isfinite(a)) for a in arrays):
        raise ValueError("std must be > 0, high > low, all finite")
    # Bin edges in the element's standard units; rounding lets float noise share a table.
    bounds = np.round(np.stack([(low_ - mean_) / std_, (high_ - mean_) / std_], axis=1), 9)
    unique, index = np.unique(bounds, axis=0, return_inverse=True)
    edges = unique[:, :1] + (unique[:, 1:] - unique[:, :1]) * (np.arange(1, levels) / levels)
    cdf = np.concatenate([np.zeros((len(unique), 1)), ndtr(edges), np.ones((len(unique), 1))], axis=1)
    return tables_from_probabilities(np.diff(cdf, axis=1), index.reshape(-1), precision)


def encode_symbols(symbols: np.ndarray, tables: FrequencyTables) -> bytes:
    """Arithmetic-code one message: symbol d (in [0, levels)) under table `tables.index[d]`."""
    sym = tables._checked(symbols)
    starts = tables.cumulative[tables.index, sym].tolist()
    ends = tables.cumulative[tables.index, sym + 1].tolist()
    shift = tables.precision
    low, high, pending = 0, TOP, 0
    bits: list[int] = []
    emit = bits.append
    for start, end in zip(starts, ends, strict=True):
        span = high - low + 1
        high = low + ((span * end) >> shift) - 1
        low = low + ((span * start) >> shift)
        while True:
            if high < HALF:
                emit(0)
                if pending:
                    bits.extend([1] * pending)
                    pending = 0
            elif low >= HALF:
                emit(1)
                if pending:
                    bits.extend([0] * pending)
                    pending = 0
                low -= HALF
                high -= HALF
            elif low >= QUARTER and high < THREE_QUARTERS:
                pending += 1
                low -= QUARTER
                high -= QUARTER
            else:
                break
            low <<= 1
            high = (high << 1) | 1
    # After renormalisation HALF always lies in [low, high], so the code point "1 then zeros" (the pending
    # bits are zeros after a 1) ends the message; when low is 0 and nothing is pending, all zeros do.
    if low or pending:
        bits.append(1)
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().rstrip(b"\x00")


def decode_symbols(data: bytes, tables: FrequencyTables, count: int | None = None) -> np.ndarray:
    """Decode `count` symbols (default: tables.count) from a payload made by `encode_symbols`."""
    count = tables.count if count is None else count
    if count != tables.count:
        raise ValueError(f"these tables code {tables.count} symbols, not {count}")
    bits = np.unpackbits(np.frombuffer(bytes(data), dtype=np.uint8)).tolist()
    nbits = len(bits)
    bits.extend([0] * CODE_BITS)
    value = int("".join(map(str, bits[:CODE_BITS])), 2)
    pos = CODE_BITS
    cum_lists = [row.tolist() for row in tables.cumulative]
    shift = tables.precision
    low, high = 0, TOP
    out = [0] * count
    for d, k in enumerate(tables.index.tolist()):
        cum = cum_lists[k]
        span = high - low + 1
        target = (((value - low + 1) << shift) - 1) // span
        s = bisect_right(cum, target) - 1
        out[d] = s
        high = low + ((span * cum[s + 1]) >> shift) - 1
        low = low + ((span * cum[s]) >> shift)
        while True:
            if high < HALF:
                pass
            elif low >= HALF:
                low -= HALF
                high -= HALF
                value -= HALF
            elif low >= QUARTER and high < THREE_QUARTERS:
                low -= QUARTER
                high -= QUARTER
                value -= QUARTER
            else:
                break
            low <<= 1
            high = (high << 1) | 1
            value = (value << 1) | (bits[pos] if pos < nbits else 0)
            pos += 1
    return np.asarray(out, dtype=np.int64)
