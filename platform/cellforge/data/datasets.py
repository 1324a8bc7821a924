"""Built-in data sets: nothing is downloaded, each ships in a package or is generated.

    >>> import cellforge as cf
    >>> cf.datasets.load("adding", n=100, length=50).x.shape
    (100, 50, 2)
"""

from __future__ import annotations

import numpy as np

from cellforge.data import anomalies, speech
from cellforge.data.debian import debian_descriptions
from cellforge.data.docstrings import docstrings
from cellforge.data.sources import Sequences, Series


def digits() -> Sequences:
    """scikit-learn's 8x8 handwritten digits, each image read as 8 steps of 8 pixels (1797 images)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return Sequences(d.images.astype(np.float32), d.target.astype(np.int64), name="digits")


def sunspots() -> Series:
    """statsmodels' yearly sunspot numbers, 1700-2008 (309 values)."""
    from statsmodels.datasets import sunspots as ss

    df = ss.load_pandas().data
    return Series(df["SUNACTIVITY"].to_numpy(np.float64), ["SUNACTIVITY"], name="sunspots")


def adding(n: int = 10000, length: int = 100, seed: int = 0) -> Sequences:
    """The adding problem (Hochreiter & Schmidhuber 1997): steps carry (value, marker); the target
    is the sum of the two values whose marker is 1, one in each half. Predicting the mean (1.0)
    scores an MSE of about 0.167."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(0, 1, (n, length))
    marks = np.zeros((n, length))
    half = length // 2
    first, second = rng.integers(0, half, n), rng.integers(half, length, n)
    marks[np.arange(n), first] = 1
    marks[np.arange(n), second] = 1
    y = values[np.arange(n), first] + values[np.arange(n), second]
    return Sequences(np.stack([values, marks], -1).astype(np.float32), y.astype(np.float32), name="adding")


def numbers(source: str = "en", target: str = "fr", low: int = 0, high: int = 10000) -> Sequences:
    """Integers written out in words in one language -> the same integer in another (num2words),
    one example per integer in [low, high), so every held-out number is one training never saw.

        >>> d = numbers(low=4012, high=4013)
        >>> d.x, d.y
        (['four thousand and twelve'], ['quatre mille douze'])
    """
    from num2words import num2words

    if not 0 <= low < high:
        raise ValueError(f"numbers: expected 0 <= low < high, got low={low}, high={high}")
    ints = range(low, high)
    try:
        x, y = [num2words(i, lang=source) for i in ints], [num2words(i, lang=target) for i in ints]
    except NotImplementedError as e:  # num2words' error for a language it does not have
        raise ValueError(f"numbers: {e}") from None
    return Sequences(x, y, name=f"numbers-{source}-{target}")


DATE_LOCALES = ("en_US", "en_GB", "fr_FR", "de_DE", "es_ES", "it_IT", "pt_BR", "nl_NL")
DATE_FORMATS = ("short", "medium", "long", "full")  # CLDR's: 3/3/22, Mar 3, 2022, March 3, 2022, Thursday, ...


def dates(n: int = 2000, locales: tuple[str, ...] = DATE_LOCALES, formats: tuple[str, ...] = DATE_FORMATS,
          start: str = "1950-01-01", end: str = "2049-12-31", seed: int = 0) -> Sequences:
    """Dates as people write them in many locales and formats (Babel's CLDR data) -> ISO 8601.

    ``n`` distinct dates drawn between ``start`` and ``end``, each written in every locale and
    format (identical spellings once); ``groups`` holds each row's date, so splits hold out dates,
    not formats: a test date is never seen in training in any form.

        >>> d = dates(n=1, locales=("fr_FR",), formats=("full",), start="2022-03-03", end="2022-03-03")
        >>> d.x, d.y
        (['jeudi 3 mars 2022'], ['2022-03-03'])
    """
    import datetime

    from babel.dates import format_date

    first, last = datetime.date.fromisoformat(start), datetime.date.fromisoformat(end)
    span = (last - first).days + 1
    if not 0 < n <= span:
        raise ValueError(f"dates: expected 0 < n <= {span} (the days from start to end), got n={n}")
    days = np.sort(np.random.default_rng(seed).choice(span, n, replace=False))
    x, y, groups = [], [], []
    for day in days.tolist():
        date = first + datetime.timedelta(days=day)
        for text in dict.fromkeys(format_date(date, f, locale=loc) for loc in locales for f in formats):
            x.append(text)
            y.append(date.isoformat())
            groups.append(day)
    return Sequences(x, y, name="dates", groups=groups)


DATASETS = {"digits": digits, "sunspots": sunspots, "adding": adding, "numbers": numbers, "dates": dates,
            "docstrings": docstrings, "co2_seasonal": anomalies.co2_seasonal,
            "internal_bleeding": anomalies.internal_bleeding, "spoken_words": speech.spoken_words,
            "spoken_digits": speech.spoken_digits, "debian_descriptions": debian_descriptions}


def load(name: str, **kwargs) -> Sequences | Series:
    """Load a built-in data set by name: ``digits``, ``sunspots``, ``adding``, ``numbers``, ``dates``,
    ``docstrings``, ``co2_seasonal`` or ``internal_bleeding`` (a labelled anomaly; see
    :mod:`cellforge.data.anomalies`), ``spoken_words`` or ``spoken_digits`` (synthesised speech, WAV
    paths; see :mod:`cellforge.data.speech`) or ``debian_descriptions`` (real text: package descriptions ->
    archive sections, :mod:`cellforge.data.debian`)."""
    try:
        fn = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; known data sets: {sorted(DATASETS)}") from None
    return fn(**kwargs)
