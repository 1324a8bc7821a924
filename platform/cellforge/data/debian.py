"""The ``debian_descriptions`` data set: real text, classified. Debian packages' one-line descriptions
(bookworm main) -> the archive section their maintainers filed them in, ten sections of 400 packages
(``scripts/make_debian_text.py`` extracted them from the apt lists into ``files/debian/``).

``groups`` is the description without its parenthesised parts, so a package's '(data files)' or
'(documentation)' companions land in the split of the package itself.
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


def tfidf_baseline(train_x: list[str], train_y, test_x: list[str], test_y) -> float:
    """Test accuracy of TF-IDF (word 1-2 grams) + logistic regression fitted on the training texts."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    clf = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(C=10, max_iter=2000))
    clf.fit(train_x, train_y)
    return float(np.mean(clf.predict(test_x) == np.asarray(test_y)))
