"""The speech data sets, synthesised (nothing downloaded): spoken words and spoken digit strings.

Each clip is ``espeak-ng`` speaking one text in one *voice* (an accent, e.g. ``en-gb-scotland``, with a
voice variant, e.g. ``f3``), at a random speed and pitch, resampled to 16 kHz, then reverberated (a
synthetic room: exponentially decaying noise as the impulse response, RT60 0.1-0.4 s) and mixed with
white noise at 15-30 dB SNR. ``groups`` is the voice, so a split holds voices out: a test voice is
one training never heard.

Clips are WAV files with a ``manifest.csv`` (path, text, voice, speed, pitch, SNR) under
``~/.cache/cellforge/datasets/speech-<key>/``, the key hashing the arguments and espeak-ng's version;
every random choice comes from ``seed`` and the clip's index, so the same arguments make the same
corpus. ``scripts/make_speech.py`` builds it from the command line. A clip takes ~30 ms (2/3 of it
espeak-ng's), so the test-sized corpora (864 and 960 clips) take 12-25 s on 2 cores.

    >>> d = spoken_words(voices=2, repeats=1, words=("yes", "no"))
    >>> len(d.x), sorted(set(d.y)), sorted(set(d.groups))
    (4, ['no', 'yes'], ['en-gb+m3', 'en-us+m5'])
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cellforge.data.sources import Sequences

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COMMANDS = ("yes", "no", "up", "down", "left", "right", "stop", "go")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4", "f5")
SAMPLE_RATE = 16000


def voices(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct voices ``accent+variant``, accents taken in turn so every accent is used."""
    if not 0 < n <= len(ACCENTS) * len(VARIANTS):
        raise ValueError(f"speech: expected 0 < voices <= {len(ACCENTS) * len(VARIANTS)}, got {n}")
    rng = np.random.default_rng(seed)
    variants = [list(rng.permutation(VARIANTS)) for _ in ACCENTS]
    return [f"{ACCENTS[i % len(ACCENTS)]}+{variants[i % len(ACCENTS)][i // len(ACCENTS)]}" for i in range(n)]


def spoken_words(voices: int = 24, repeats: int = 2, words: tuple[str, ...] = DIGITS + COMMANDS,
                 seed: int = 0, cache: bool = True) -> Sequences:
    """Single spoken words (default: the ten digits and eight commands) -> the word: ``repeats``
    clips of each word per voice, each at its own speed and pitch. x: WAV paths; groups: the voice."""
    texts = [w for w in words for _ in range(repeats)]
    rows = corpus("words", [texts] * voices, seed, cache)
    return Sequences([r["path"] for r in rows], [r["text"] for r in rows], name="spoken_words",
                     groups=[r["voice"] for r in rows])


def spoken_digits(voices: int = 24, per_voice: int = 40, min_digits: int = 2, max_digits: int = 5,
                  seed: int = 0, cache: bool = True) -> Sequences:
    """Spoken strings of ``min_digits``-``max_digits`` digits -> their transcript ('three one four'),
    for ``task: transcribe``. x: WAV paths; groups: the voice."""
    if not 0 < min_digits <= max_digits:
        raise ValueError(f"spoken_digits: expected 0 < min_digits <= max_digits, got {min_digits}, {max_digits}")
    rng = np.random.default_rng(seed + 1)
    texts = [" ".join(DIGITS[d] for d in rng.integers(0, 10, rng.integers(min_digits, max_digits + 1)))
             for _ in range(per_voice * voices)]
    # each voice its own strings: a held-out voice also says strings training never heard
    rows = corpus("digits", [texts[v * per_voice: (v + 1) * per_voice] for v in range(voices)], seed, cache)
    return Sequences([r["path"] for r in rows], [r["text"] for r in rows], name="spoken_digits",
                     groups=[r["voice"] for r in rows])


def corpus(kind: str, texts: list[list[str]], seed: int = 0, cache: bool = True) -> list[dict]:
    """``texts[v]`` spoken by voice ``v`` (of ``len(texts)`` voices): the manifest's rows (a cached corpus
    is read back, never rebuilt)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise RuntimeError("speech data sets need espeak-ng (Debian: apt-get install espeak-ng; make sysdeps)")
    version = subprocess.run([espeak, "--version"], capture_output=True, text=True).stdout.strip()
    key = json.dumps([kind, texts, seed, version, SAMPLE_RATE])
    root = _cache_dir() / f"speech-{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    manifest = root / "manifest.csv"
    if cache and manifest.is_file():
        with manifest.open() as f:
            return [{**r, "path": str(root / r["path"])} for r in csv.DictReader(f)]
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    jobs = [(v, voice, i, text) for v, voice in enumerate(voices(len(texts), seed)) for i, text in enumerate(texts[v])]

    def make(job: tuple[int, str, int, str]) -> dict:
        v, voice, i, text = job
        rng = np.random.default_rng([seed, v, i])
        speed, pitch, snr = int(rng.integers(130, 200)), int(rng.integers(25, 76)), float(rng.uniform(15, 30))
        name = f"{v:03d}-{i:04d}.wav"
        _synthesise(espeak, voice, text, speed, pitch, snr, rng, tmp / name)
        return {"path": name, "text": text, "voice": voice, "speed": speed, "pitch": pitch, "snr_db": round(snr, 2)}

    # espeak-ng's process is 2/3 of a clip's 30 ms: threads overlap them (864 clips: 25 s -> 12 s on 2 cores)
    with ThreadPoolExecutor(max(2, os.cpu_count() or 1)) as pool:
        rows = list(pool.map(make, jobs))
    with (tmp / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    if cache:
        try:
            tmp.replace(root)  # atomic: a concurrent build leaves one whole corpus
        except OSError:  # another process got there first: its corpus is the same
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        root = tmp
    return [{**r, "path": str(root / r["path"])} for r in rows]


def _synthesise(espeak: str, voice: str, text: str, speed: int, pitch: int, snr_db: float,
                rng: np.random.Generator, path: Path) -> None:
    import librosa
    import soundfile as sf
    from scipy.signal import fftconvolve

    raw = subprocess.run([espeak, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         capture_output=True, check=True).stdout
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        f.write(raw)
        f.flush()
        audio, sr = sf.read(f.name, dtype="float32")
    audio = librosa.resample(audio, orig_sr=sr, target_sr=SAMPLE_RATE)
    audio, _ = librosa.effects.trim(audio, top_db=40)
    audio = np.pad(audio, (int(rng.integers(800, 3200)), int(rng.integers(800, 3200))))
    rt60 = rng.uniform(0.1, 0.4)  # seconds for the tail to fall by 60 dB
    t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
    ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
    ir[0] = 1.0 / 0.3  # the direct sound dominates: ~30% of the energy is reverberant
    wet = fftconvolve(audio, ir * 0.3)[: len(audio)]  # np.convolve: 50 ms a clip, this 1 ms
    noise = rng.standard_normal(len(wet))
    noise *= np.sqrt(np.mean(wet ** 2) / 10 ** (snr_db / 10) / np.mean(noise ** 2))
    out = wet + noise
    out = (out / max(1e-6, np.abs(out).max()) * 0.9).astype(np.float32)
    sf.write(str(path), out, SAMPLE_RATE, subtype="PCM_16")


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cellforge" / "datasets"
