"""Ed25519 keys and signatures over a bundle's manifest (with the ``cryptography`` library).

Checksums catch corruption, not tampering: whoever can change a weight can recompute the manifest.
A signature over ``manifest.json`` (which holds every file's sha256 and the bundle's provenance)
ties the whole bundle to the holder of a private key; ``cellforge.bundle.verify`` checks it when a
verify key is set (``verify_key=`` or ``$CELLFORGE_VERIFY_KEY``).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> private, public = keygen(d / "team.pem")
    >>> sig = sign_bytes(b"manifest", private)
    >>> check_bytes(b"manifest", sig, public), check_bytes(b"manifest!", sig, public)
    (True, False)

Keys are PEM files: a PKCS#8 private key (``cellforge keygen K`` writes ``K``, readable by its owner
only, and ``K.pub``), and a SubjectPublicKeyInfo public key, as ``openssl genpkey -algorithm ed25519``
and ``openssl pkey -pubout`` write them.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from cellforge.errors import BundleError

ALGORITHM = "ed25519"
SIGNATURE_FILE = "signature.json"  # beside manifest.json, outside it: it signs the manifest
VERIFY_KEY_ENV = "CELLFORGE_VERIFY_KEY"


def keygen(path: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 private key to ``path`` (mode 600) and its public key to ``path.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists: refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = path.with_name(path.name + ".pub")
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return path, pub


def _private(key: str | Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        k = serialization.load_pem_private_key(Path(key).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise BundleError(f"signing key {key}: cannot read an unencrypted PEM private key ({e})") from None
    if not isinstance(k, Ed25519PrivateKey):
        raise BundleError(f"signing key {key}: expected an Ed25519 key, got {type(k).__name__}; "
                          "make one with `cellforge keygen KEY`")
    return k


def _public(key: str | Path):
    """A verify key: a public key PEM, or a private key PEM (its public half)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    try:
        data = Path(key).read_bytes()
    except OSError as e:
        raise BundleError(f"verify key {key}: cannot read it ({e.strerror})") from None
    try:
        k = serialization.load_pem_public_key(data)
    except ValueError:
        k = _private(key)
    if isinstance(k, Ed25519PrivateKey):
        k = k.public_key()
    if not isinstance(k, Ed25519PublicKey):
        raise BundleError(f"verify key {key}: expected an Ed25519 public key, got {type(k).__name__}")
    return k


def sign_bytes(data: bytes, key: str | Path) -> dict[str, Any]:
    """The signature record of ``data`` under the private key in ``key``."""
    from cryptography.hazmat.primitives import serialization

    k = _private(key)
    raw = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"algorithm": ALGORITHM, "public_key": base64.b64encode(raw).decode(),
            "signature": base64.b64encode(k.sign(data)).decode()}


def check_bytes(data: bytes, record: dict[str, Any], key: str | Path) -> bool:
    """Whether ``record`` is a valid signature of ``data`` by the key's holder."""
    from cryptography.exceptions import InvalidSignature

    if not isinstance(record, dict) or record.get("algorithm") != ALGORITHM:
        return False
    try:
        _public(key).verify(base64.b64decode(record.get("signature", ""), validate=True), data)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def verify_key(given: str | Path | None = None) -> str | None:
    """The verify key in force: ``given``, else ``$CELLFORGE_VERIFY_KEY``, else None (no check)."""
    return str(given) if given else os.environ.get(VERIFY_KEY_ENV) or None


def check_signature(path: Path, key: str | Path) -> None:
    """Refuse the bundle at ``path`` unless its manifest carries a valid signature by ``key``."""
    _public(key)  # a key that cannot be read is the first thing to fix
    sig = path / SIGNATURE_FILE
    if not sig.exists():
        raise BundleError(f"bundle {path} is not signed, and a verify key is set ({key}): refusing to load it; "
                          f"sign it with `cellforge sign {path} --key PRIVATE_KEY`")
    try:
        record = json.loads(sig.read_text())
    except json.JSONDecodeError:
        record = None
    if not check_bytes((path / "manifest.json").read_bytes(), record, key):
        raise BundleError(f"bundle {path}: its signature does not match the verify key {key} — the bundle "
                          "was changed after it was signed, or signed with another key; refusing to load it")
