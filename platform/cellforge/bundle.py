"""The saved-model format: a directory, checksummed, with no pickle anywhere.

    bundle/
      manifest.json        format, version and the sha256 of every other file
      spec.json            the completed ModelSpec
      weights.safetensors  canonical names and gate order (see cellforge.backends)
      preprocessing.json   scalers, vocabulary, class labels, window
      metrics.json         test metrics, per-epoch history, baselines
      signature.json       (when signed) an Ed25519 signature over manifest.json: cellforge.signing

``save`` writes to a temporary sibling and renames it into place, so a bundle on disk
is always whole. ``read`` refuses a bundle whose manifest does not verify.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from cellforge import signing
from cellforge.backends.network import param_shapes
from cellforge.cells import CELLS
from cellforge.errors import BundleError
from cellforge.spec import ModelSpec

FORMAT, VERSION = "cellforge-bundle", 1
FILES = ("spec.json", "weights.safetensors", "preprocessing.json", "metrics.json")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(path: str | Path, spec: ModelSpec, weights: dict[str, np.ndarray], preprocessing: dict[str, Any],
         metrics: dict[str, Any], extra: dict[str, bytes] | None = None,
         provenance: dict[str, Any] | None = None) -> Path:
    """Write a bundle atomically; an existing bundle at ``path`` is replaced only once the new one is whole.

    ``extra``: more files (name -> bytes), checksummed in the manifest like the others (a compressed
    bundle's ONNX graphs, see cellforge.export.compress). ``provenance``: where it came from (run id, data
    fingerprint, code and cellforge versions; see cellforge.tracking.provenance), kept in the manifest."""
    path = Path(path)
    expected = param_shapes(spec)
    if set(weights) != set(expected):
        raise BundleError(f"weights do not match the spec: missing {sorted(set(expected) - set(weights))}, "
                          f"unexpected {sorted(set(weights) - set(expected))}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (tmp / "spec.json").write_text(spec.to_json())
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in weights.items()},
                  str(tmp / "weights.safetensors"), metadata={"format": FORMAT})
        (tmp / "preprocessing.json").write_text(json.dumps(preprocessing, indent=1))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float))
        for name, data in (extra or {}).items():
            if name in FILES or name == "manifest.json" or Path(name).name != name:
                raise BundleError(f"extra file {name!r}: use a plain file name other than {FILES}")
            (tmp / name).write_bytes(data)
        manifest = {"format": FORMAT, "version": VERSION, "framework": spec.framework,
                    "files": {f: sha256(tmp / f) for f in (*FILES, *(extra or {}))}}
        if provenance is not None:
            manifest["provenance"] = provenance
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def digest(path: str | Path) -> str:
    """The bundle's identity: the sha256 of its manifest (which holds every other file's sha256)."""
    return hashlib.sha256((Path(path) / "manifest.json").read_bytes()).hexdigest()


def verify(path: str | Path, verify_key: str | Path | None = None, *, signature: bool = True) -> dict[str, Any]:
    """Check the manifest and every checksum, and with a verify key (``verify_key`` or
    ``$CELLFORGE_VERIFY_KEY``, a public key PEM) the signature; return the manifest or raise BundleError."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"bundle not found: {path} is not a directory")
    mf = path / "manifest.json"
    if not mf.exists():
        raise BundleError(f"bundle {path}: manifest.json is missing — not a cellforge bundle, or incomplete")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"bundle {path}: manifest.json is not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise BundleError(f"bundle {path}: unknown format {manifest.get('format')!r} version "
                          f"{manifest.get('version')!r}; this cellforge reads {FORMAT} version {VERSION}")
    listed = manifest.get("files", {})
    missing = [f for f in FILES if f not in listed]
    if missing:
        raise BundleError(f"bundle {path}: manifest does not list {missing}")
    for name, digest in listed.items():
        f = path / name
        if not f.is_file():
            raise BundleError(f"bundle {path}: {name} is missing")
        if sha256(f) != digest:
            raise BundleError(f"bundle {path}: {name} does not match its sha256 in manifest.json — "
                              "the bundle was modified or is corrupt; refusing to load it")
    key = signing.verify_key(verify_key)
    if key is not None and signature:
        signing.check_signature(path, key)
    return manifest


def sign(path: str | Path, key: str | Path) -> Path:
    """Sign a verified bundle's manifest with the Ed25519 private key in ``key`` (a PEM file): writes
    ``signature.json``, replacing an earlier signature."""
    path = Path(path)
    verify(path, signature=False)  # signing is how an unsigned bundle gets its signature
    record = signing.sign_bytes((path / "manifest.json").read_bytes(), key)
    out = path / signing.SIGNATURE_FILE
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, out)
    return out


def read(path: str | Path, verify_key: str | Path | None = None,
         ) -> tuple[ModelSpec, dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """Verify and read a bundle: (spec, weights, preprocessing state, metrics)."""
    path = Path(path)
    verify(path, verify_key)
    text = (path / "spec.json").read_text()
    _check_cell(path, text)
    spec = ModelSpec.from_json(text)
    weights = load_file(str(path / "weights.safetensors"))
    expected = param_shapes(spec)
    bad = {k: (v.shape, expected.get(k)) for k, v in weights.items() if expected.get(k) != v.shape}
    if bad or set(expected) != set(weights):
        raise BundleError(f"bundle {path}: weights do not match spec.json: {bad or sorted(set(expected) ^ set(weights))}")
    return spec, weights, json.loads((path / "preprocessing.json").read_text()), json.loads((path / "metrics.json").read_text())


def _check_cell(path: Path, spec_text: str) -> None:
    """A bundle stores only its cell's name: a custom cell must be registered before loading."""
    try:
        cell = json.loads(spec_text).get("cell", "lstm")
    except (json.JSONDecodeError, AttributeError):
        return  # ModelSpec.from_json reports it
    if isinstance(cell, str) and cell not in CELLS:
        raise BundleError(f"bundle {path}: its model uses the cell {cell!r}, which is not registered in this "
                          f"process (known cells: {sorted(CELLS)}); define that cell and call "
                          f"cellforge.register_cell(Cell({cell!r}, ...)) before loading the bundle")
