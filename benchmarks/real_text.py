"""Recurrent text classifiers against TF-IDF + logistic regression on real text, in one run.

    ray-slot --alone .venv/bin/python benchmarks/real_text.py            # word and char level, a few minutes
    ray-slot --alone .venv/bin/python benchmarks/real_text.py --only word --seeds 0 1 2

The data: ``debian_descriptions`` (4,000 Debian package descriptions -> 10 archive sections), split by
group at random (``debian_splits``: 70 / 15 / 15, a package's '(data files)' companions with it) and
given to ``cf.fit`` as official splits, so the recurrent model trains on exactly the baseline's training
texts, stops early on the validation texts and is scored on the same test texts. The baseline
(``tfidf_baseline``: word 1-2 grams, sublinear tf, C=10) is fitted on the training texts only; its figure
fitted on training + validation texts is printed too (what it gets from the texts the model only used to
stop). ``--seeds``: other random splits. The specs are tests/integration/test_real_text.py's (WORD,
CHAR), which holds the word-level one to within 2 points of the baseline (make test-all; the char-level
one is a strict xfail until it gets there). Measured (split 0): TF-IDF 0.795 (0.800 fitted on train +
validation), word-level GRU 0.790, char-level 0.660. The machine may be shared: note ``uptime``'s load
average next to the figures (it changes the times; the accuracies stay, up to float summation order).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["word", "char"], action="append", help="one tokenizer (default both)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="split seeds (default 0, the tests' split)")
    args = ap.parse_args()
    os.environ.setdefault("CELLFORGE_TRACKING", "none")
    from test_real_text import CHAR, WORD

    import cellforge as cf
    from cellforge.data.debian import debian_splits, tfidf_baseline

    specs = {"word": WORD, "char": CHAR}
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as runs:
        for seed in args.seeds:
            s = debian_splits(seed=seed)
            train, val, test = s["train"], s["val"], s["test"]
            base = tfidf_baseline(train.x, train.y, test.x, test.y)
            base_tv = tfidf_baseline(train.x + val.x, train.y + val.y, test.x, test.y)
            print(f"split seed {seed}: {len(train.x)} train / {len(val.x)} validation / {len(test.x)} test texts; "
                  f"TF-IDF + logistic regression {base:.3f} (fitted on train + validation: {base_tv:.3f})", flush=True)
            for kind in args.only or ["word", "char"]:
                t = time.perf_counter()
                r = cf.fit(specs[kind], train, validation=val, test=test, name=f"{kind}-{seed}", storage_path=runs,
                           tracking="none", verbose=False)
                acc = r.metrics["test_accuracy"]
                print(f"  {kind}-level GRU: test accuracy {acc:.3f} ({acc - base:+.3f} against TF-IDF), "
                      f"{len(r.history)} epochs in {time.perf_counter() - t:.0f} s, load {os.getloadavg()[0]:.2f}",
                      flush=True)


if __name__ == "__main__":
    main()
