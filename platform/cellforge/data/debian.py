"""The ``debian_descriptions`` data set: real text, classified. Debian packages' one-line descriptions
(bookworm main) -> the archive section their maintainers filed them in, ten sections of 400 packages
(``scripts/make_debian_text.py`` extracted them from the apt lists into ``files/debian/``).

``groups`` is the description without its parenthesised parts, so a package's '(data files)' or
'(documentation)' companions land in the split of the package itself.
``debian_splits`` cuts it into train / validation / test by group (the split ``cf.fit`` would make), to
give ``cf.fit`` as official splits, so the baseline sees exactly the model's examples.
``tfidf_baseline`` is the reference a recurrent model is held against: TF-IDF + logistic regression
(scikit-learn) on the same split.

    >>> d = debian_descriptions()
    >>> len(d.x), sorted(set(d.y))[:3], d.x[0]
    (4000, ['admin', 'fonts', 'games'], 'Real-time strategy game of ancient warfare')
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from cellforge.data.sources import Sequences

FILE = Path(__file__).parent / "files" / "debian" / "descriptions.csv"


def debian_descriptions() -> Sequences:
    """Descriptions -> sections (4,000 packages, 10 sections)."""
    with FILE.open(newline="") as f:
        rows = list(csv.DictReader(f))
    texts = [r["description"] for r in rows]
    groups = [re.sub(r"\s*\([^)]*\)", "", t).strip().lower() for t in texts]
    return Sequences(texts, [r["section"] for r in rows], name="debian_descriptions", groups=groups)


def debian_splits(val: float = 0.15, test: float = 0.15, seed: int = 0) -> dict[str, Sequences]:
    """``debian_descriptions`` split by group at random (``cellforge.data.preprocess.split_groups``, as
    ``cf.fit`` splits a grouped data set at these fractions): {'train', 'val', 'test'} -> Sequences.

        >>> s = debian_splits()
        >>> {k: len(v.x) for k, v in s.items()}
        {'train': 2798, 'val': 588, 'test': 614}
        >>> bool(set(s["train"].groups) & set(s["test"].groups))
        False
    """
    from cellforge.data.preprocess import split_groups

    d = debian_descriptions()
    rows = split_groups(d.groups, val, test, seed)
    return {k: Sequences([d.x[i] for i in r], [d.y[i] for i in r], name=f"debian_descriptions[{k}]",
                         groups=[d.groups[i] for i in r]) for k, r in rows.items()}


def tfidf_baseline(train_x: list[str], train_y, test_x: list[str], test_y) -> float:
    """Test accuracy of TF-IDF (word 1-2 grams) + logistic regression fitted on the training texts."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    # newton-cg: the same fit as the default lbfgs (the same predictions on 3 splits' test texts) in 0.9-1.3 s
    # instead of 8-13 s on this machine's 2 busy cores
    clf = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                        LogisticRegression(C=10, max_iter=2000, solver="newton-cg"))
    clf.fit(train_x, train_y)
    return float(np.mean(clf.predict(test_x) == np.asarray(test_y)))
