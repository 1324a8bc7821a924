"""Build the synthesised speech corpora (cellforge.data.speech) into ~/.cache/cellforge/datasets.

    python scripts/make_speech.py                      # the test-sized corpora (24 voices)
    python scripts/make_speech.py --voices 60 --repeats 5 --per-voice 200

Prints each corpus' folder (WAV files + manifest.csv), its clips, voices and build time. The script,
not the audio, is the source of truth: the same arguments and espeak-ng version make the same corpus.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cellforge.data import speech


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voices", type=int, default=24, help="voices (accent + variant), held out as groups")
    ap.add_argument("--repeats", type=int, default=2, help="spoken_words: clips of each word per voice")
    ap.add_argument("--per-voice", type=int, default=40, help="spoken_digits: digit strings per voice")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    for name, make in (("spoken_words", lambda: speech.spoken_words(a.voices, a.repeats, seed=a.seed)),
                       ("spoken_digits", lambda: speech.spoken_digits(a.voices, a.per_voice, seed=a.seed))):
        start = time.perf_counter()
        d = make()
        print(f"{name}: {len(d.x)} clips, {len(set(d.groups))} voices, {len(set(d.y))} distinct texts in "
              f"{time.perf_counter() - start:.1f} s -> {Path(d.x[0]).parent}")


if __name__ == "__main__":
    main()
