"""Audio feature extraction: cellforge's preprocessing path against librosa called directly, and the
share of a spoken-word fit spent computing features.

    .venv/bin/python benchmarks/audio.py [--clips 400] [--repeats 3] [--fit]

1. Clips per second: ``cellforge.data.audio.featurize`` (read the WAV with soundfile, check it, log-mel
   by librosa) against a loop of ``soundfile.read`` + ``librosa.feature.melspectrogram`` + ``np.log`` on the
   same clips (the spoken_words corpus, 16 kHz, ~0.8 s each), same parameters; the median of
   ``--repeats`` timed runs after a warm-up. The ratio is the cost of cellforge's checks.
2. With ``--fit``: one ``cf.fit`` of the spoken-word classifier (tests/integration/test_speech.py's spec,
   3 epochs), timing ``prepare`` (features for every clip, computed once: epochs read the arrays Ray
   Train holds in its object store, so no epoch recomputes them) against the whole fit.

The machine may be shared: compare the two measured in the same run, and give the load average
(printed) next to any figure. Measured 2026-11-30 (2 cores, ``ray-slot --alone``, load 4.8 then 3.4):
librosa directly 1158 clips/s, featurize 1059 clips/s (1.09x librosa's time); a 3-epoch fit of the 864
spoken_words clips took 37.8 s, of which features 0.9 s (2%) and epochs 1.6 s: the rest is Ray and its
workers starting.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from _timing import median_s

FEATURES = {"type": "audio", "audio": {"frame_length": 640, "hop_length": 320, "n_mels": 32, "per_utterance": True}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fit", action="store_true", help="also time a 3-epoch fit and its preprocessing")
    a = ap.parse_args()

    import librosa
    import soundfile as sf

    import cellforge as cf
    from cellforge.data import audio

    data = cf.datasets.load("spoken_words")
    paths = data.x[: a.clips]
    params = cf.ModelSpec(input=FEATURES).input.audio.model_dump() | {"per_utterance": False}

    def direct():
        return [np.log(librosa.feature.melspectrogram(y=y, sr=sr, n_fft=640, hop_length=320, n_mels=32) + 1e-6).T
                for y, sr in (sf.read(p, dtype="float32") for p in paths)]

    def ours():
        audio.featurize(paths, params)

    t_direct, t_ours = median_s(direct, a.repeats), median_s(ours, a.repeats)
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(f"librosa directly:  {len(paths) / t_direct:8.0f} clips/s")
    print(f"cellforge featurize: {len(paths) / t_ours:6.0f} clips/s  ({t_ours / t_direct:.2f}x librosa's time)")
    if a.fit:
        from cellforge.data.preprocess import prepare

        spec = {"task": "classify", "cell": "gru", "hidden_size": 64, "bidirectional": True, "input": FEATURES,
                "training": {"epochs": 3, "batch_size": 32, "lr": 3e-3}}
        t0 = time.perf_counter()
        prepare(cf.ModelSpec.parse(spec), data)
        t_prep = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            r = cf.fit(spec, data, name="audio-bench", storage_path=d, verbose=False, tracking="none")
            t_fit = time.perf_counter() - t0
        epochs = sum(h["time_s"] for h in r.history)
        print(f"load average {os.getloadavg()[0]:.2f}")
        print(f"fit of {len(data.x)} clips, 3 epochs: {t_fit:.1f} s; features (prepare) {t_prep:.1f} s = "
              f"{t_prep / t_fit:.0%} of it; epochs {epochs:.1f} s ({epochs / 3:.1f} s each)")


if __name__ == "__main__":
    main()
