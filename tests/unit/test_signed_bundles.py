"""Signed bundles: provenance in the manifest, an Ed25519 signature over it; with a verify key an
unsigned, re-manifested or wrongly signed bundle is refused by cf.load, deploy's config check and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import cellforge as cf
from cellforge import bundle, signing, tracking
from cellforge.backends import numpy as ref
from cellforge.cli import main
from cellforge.data import prepare


@pytest.fixture
def saved(tmp_path, monkeypatch):
    monkeypatch.delenv(signing.VERIFY_KEY_ENV, raising=False)
    data = cf.datasets.load("digits")
    spec, prepared = prepare(cf.ModelSpec(task="classify", hidden_size=8), data)
    fp = tracking.fingerprint_of(prepared.splits, prepared.preprocessor.state)
    path = bundle.save(tmp_path / "b", spec, ref.init_params(spec, seed=3), prepared.preprocessor.state,
                       {"test": {}}, provenance=tracking.provenance("run123", fp))
    return path


@pytest.fixture
def keys(tmp_path):
    return signing.keygen(tmp_path / "keys" / "team.pem"), signing.keygen(tmp_path / "keys" / "other.pem")


def _tamper(path):
    """Change one weight and rewrite the manifest's checksums, as someone who can write the bundle could."""
    w = load_file(str(path / "weights.safetensors"))
    name = sorted(w)[0]
    w[name] = w[name].copy()
    w[name].flat[0] += 0.5
    save_file(w, str(path / "weights.safetensors"), metadata={"format": bundle.FORMAT})
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["weights.safetensors"] = bundle.sha256(path / "weights.safetensors")
    (path / "manifest.json").write_text(json.dumps(manifest, indent=1))


def test_the_manifest_records_where_the_bundle_came_from(saved):
    prov = bundle.verify(saved)["provenance"]
    assert prov["run_id"] == "run123" and len(prov["data_fingerprint"]) == 16
    assert prov["cellforge_version"] and "code_version" in prov


def test_a_verify_key_refuses_unsigned_tampered_and_foreign_bundles(saved, keys):
    (team, team_pub), (other, _) = keys
    cf.load(saved)  # no verify key: checksums only
    with pytest.raises(cf.BundleError, match="is not signed"):
        cf.load(saved, verify_key=team_pub)
    bundle.sign(saved, team)
    before = cf.load(saved, verify_key=team_pub).weights
    _tamper(saved)
    bundle.verify(saved)  # the checksums alone cannot tell
    with pytest.raises(cf.BundleError, match="signature does not match the verify key"):
        cf.load(saved, verify_key=team_pub)
    bundle.sign(saved, other)  # signed, but by someone else
    with pytest.raises(cf.BundleError, match="signature does not match"):
        cf.load(saved, verify_key=team_pub)
    bundle.sign(saved, team)  # the owner re-signs the changed bundle: accepted
    after = cf.load(saved, verify_key=team_pub).weights
    assert any(not np.array_equal(before[k], after[k]) for k in before)


def test_the_verify_key_from_the_environment_and_the_deploy_config(saved, keys, monkeypatch):
    (team, team_pub), _ = keys
    monkeypatch.setenv(signing.VERIFY_KEY_ENV, str(team_pub))
    with pytest.raises(cf.BundleError, match="is not signed"):
        cf.load(saved)
    assert main(["sign", str(saved), "--key", str(team)]) == 0  # signing needs no signature first
    cf.load(saved)
    monkeypatch.delenv(signing.VERIFY_KEY_ENV)
    from cellforge.serving.config import DeployConfig
    from cellforge.serving.engine import Engine

    cfg = DeployConfig(bundle=str(saved), name="digits", verify_key=str(team_pub))
    assert Engine(cfg).info("digits")["run_id"] == "run123"
    _tamper(saved)
    with pytest.raises(cf.BundleError, match="signature does not match"):
        Engine(cfg)


def test_bad_keys_are_named(saved, tmp_path, capsys):
    (tmp_path / "not-a-key.pem").write_text("hello")
    assert main(["sign", str(saved), "--key", str(tmp_path / "not-a-key.pem")]) == 2
    assert "cannot read an unencrypted PEM private key" in capsys.readouterr().err
    with pytest.raises(cf.BundleError, match="verify key .*missing.pem: cannot read it"):
        cf.load(saved, verify_key=tmp_path / "missing.pem")


def test_keygen_refuses_to_overwrite_a_key(tmp_path, capsys):
    assert main(["keygen", str(tmp_path / "k.pem")]) == 0
    assert (tmp_path / "k.pem").stat().st_mode & 0o077 == 0
    with pytest.raises(FileExistsError):
        signing.keygen(tmp_path / "k.pem")
