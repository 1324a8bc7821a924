"""Extract the ``debian_descriptions`` text set: Debian packages' one-line descriptions -> their archive
section, from the apt lists of a Debian machine (bookworm main, amd64), into a committed CSV.

    python scripts/make_debian_text.py [--lists /var/lib/apt/lists] [--per-section 400]

Ten sections whose descriptions are real prose about what a program does (games, sound, graphics,
science, math, fonts, net, text, admin, web; language sections such as 'python' or 'perl' are left out:
their descriptions name the language). Packages are taken in name order, at most ``--per-section`` per
section, skipping transitional/dummy packages and duplicate descriptions. Writes
platform/cellforge/data/files/debian/descriptions.csv (package, section, description).
"""

from __future__ import annotations

import argparse
import csv
import glob
import subprocess
from pathlib import Path

SECTIONS = ("games", "sound", "graphics", "science", "math", "fonts", "net", "text", "admin", "web")
OUT = Path(__file__).resolve().parents[1] / "platform/cellforge/data/files/debian/descriptions.csv"


def packages(lists: str) -> list[dict[str, str]]:
    files = sorted(glob.glob(f"{lists}/*_debian_dists_bookworm_main_binary-amd64_Packages*"))
    if not files:
        raise SystemExit(f"no bookworm main amd64 Packages file under {lists} (run apt-get update)")
    text = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", files[0]], capture_output=True, text=True,
                          check=True).stdout
    out = []
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
        if "Package" in fields and "Description" in fields:
            out.append(fields)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lists", default="/var/lib/apt/lists")
    ap.add_argument("--per-section", type=int, default=400)
    a = ap.parse_args()
    rows, seen, counts = [], set(), dict.fromkeys(SECTIONS, 0)
    for p in sorted(packages(a.lists), key=lambda p: p["Package"]):
        section = p.get("Section", "").split("/")[-1]
        desc = p["Description"].strip()
        low = desc.lower()
        if section not in counts or counts[section] >= a.per_section or low in seen:
            continue
        if "transitional" in low or "dummy package" in low:
            continue
        seen.add(low)
        counts[section] += 1
        rows.append((p["Package"], section, desc))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["package", "section", "description"])
        w.writerows(rows)
    print(f"{len(rows)} descriptions -> {OUT}: {counts}")


if __name__ == "__main__":
    main()
