"""Series with known anomalies: real series with anomalies injected where we choose (a test with a
known answer), and a real labelled series (the UCR archive's InternalBleeding16).

    >>> base = co2_seasonal()
    >>> injected, where = inject(base, start=1500, seed=0)
    >>> [kind for _, _, kind in where]
    ['spike', 'level_shift', 'frequency', 'flatline', 'spike', 'level_shift', 'frequency', 'flatline']
    >>> int(injected.labels.sum()) == sum(b - a for a, b, _ in where)
    True
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cellforge.data.sources import Series

KINDS = ("spike", "level_shift", "frequency", "flatline")
FILES = Path(__file__).parent / "files"


def co2_seasonal() -> Series:
    """statsmodels' weekly CO2 at Mauna Loa, 1958-2001 (2,284 weeks; 59 missing, filled by linear
    interpolation), less its centred 52-week moving average: the seasonal cycle and the week-to-week
    noise, without the trend (2,232 values, ppm)."""
    from statsmodels.datasets import co2

    v = co2.load_pandas().data["co2"].interpolate().to_numpy(np.float64)
    trend = np.convolve(v, np.ones(53) / 53, mode="valid")  # 52 weeks, centred
    return Series(v[26:-26] - trend, ["co2"], name="co2_seasonal")


def inject(series: Series, kinds: tuple[str, ...] = KINDS, per_kind: int = 2, start: int = 0,
           length: int = 24, magnitude: float = 4.0, seed: int = 0) -> tuple[Series, list[tuple[int, int, str]]]:
    """``series`` with ``per_kind`` anomalies of each kind injected after step ``start``, evenly spaced
    (with a random offset each), every feature alike; returns the new Series (its ``labels`` set) and
    the (start, end, kind) of each anomaly, end exclusive. With sd the series' standard deviation:

    - spike: one step moved by ``magnitude`` sd (up or down);
    - level_shift: ``length`` steps moved by ``magnitude / 2`` sd;
    - frequency: ``length`` steps replaced by the series from that point at twice the speed;
    - flatline: ``length`` steps held at the first one's value.
    """
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"kinds: unknown {unknown}; known: {list(KINDS)}")
    v = series.values.copy()
    sd = v.std(0)
    order = [k for _ in range(per_kind) for k in kinds]
    slot = (len(v) - start - 2 * length) // max(len(order), 1)  # a frequency change reads 2 x length ahead
    if slot < 2 * length:
        raise ValueError(f"start: {len(order)} anomalies of {length} steps need more than {len(order) * 2 * length} "
                         f"steps after step {start}, the series has {len(v) - start}")
    rng = np.random.default_rng(seed)
    labels = np.zeros(len(v), bool)
    where = []
    for i, kind in enumerate(order):
        a = start + i * slot + int(rng.integers(length // 2, slot - length))
        n = 1 if kind == "spike" else length
        if kind == "spike":
            v[a] += rng.choice([-1, 1]) * magnitude * sd
        elif kind == "level_shift":
            v[a: a + n] += rng.choice([-1, 1]) * magnitude / 2 * sd
        elif kind == "frequency":
            v[a: a + n] = series.values[a: a + 2 * n: 2]
        else:
            v[a: a + n] = v[a]
        labels[a: a + n] = True
        where.append((a, a + n, kind))
    return Series(v, list(series.columns), name=f"{series.name}+anomalies", labels=labels), where


def internal_bleeding(split: str = "test") -> Series:
    """UCR anomaly archive series 135, InternalBleeding16 (as aeon ships it; see files/kdd_tsad_135):
    a heart-rate signal. ``split='train'``: 1,200 normal steps; ``'test'``: 7,501 steps, ``labels``
    marking the one anomaly (steps 4187-4198)."""
    import pandas as pd

    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    df = pd.read_csv(FILES / "kdd_tsad_135" / f"135_UCR_Anomaly_InternalBleeding16_{split.upper()}.csv")
    return Series(df["value"].to_numpy(np.float64), ["value"], name=f"internal_bleeding-{split}",
                  labels=df["is_anomaly"].to_numpy() == 1)
