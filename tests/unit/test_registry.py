"""The registry on a real MLflow SQLite store (no Ray): register, alias, fetch by alias, move the alias;
runs as a DataFrame and side by side; the commands."""

from __future__ import annotations

import pytest

import cellforge as cf
from cellforge import bundle, registry, signing, tracking
from cellforge.backends import numpy as ref
from cellforge.cli import main
from cellforge.data import prepare


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two bundles, each from a tracked 'fit' run, in one store (creating a store takes ~5 s)."""
    root = tmp_path_factory.mktemp("reg")
    mp = pytest.MonkeyPatch()
    mp.setenv("CELLFORGE_RUNS", str(root))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("CELLFORGE_TRACKING", raising=False)
    mp.delenv(signing.VERIFY_KEY_ENV, raising=False)
    spec, prepared = prepare(cf.ModelSpec(task="classify", hidden_size=8), cf.datasets.load("digits"))
    bundles, run_ids = [], []
    for seed, lr in ((1, 0.01), (2, 0.02)):
        run = tracking.start(None, root, run_name=f"fit-{seed}", params={"training.lr": lr},
                             tags={"cellforge.kind": "fit", "cellforge.data": "digits"}, id_file=root / f"f{seed}" / "t.json")
        path = bundle.save(root / f"b{seed}", spec, ref.init_params(spec, seed=seed), prepared.preprocessor.state,
                           {"test": {}}, provenance=tracking.provenance(run.run_id, "fp"))
        run.finish([{"epoch": 1, "loss": 1.0 / seed}], {"test_accuracy": 0.5 + seed / 10}, path)
        bundles.append(path)
        run_ids.append(run.run_id)
    yield root, bundles, run_ids
    mp.undo()


def test_register_alias_fetch_and_move_the_alias(store):
    root, (b1, b2), (r1, r2) = store
    one = registry.register(b1, "digits", alias="production")
    two = registry.register(b2, "digits")
    assert (one["version"], one["run_id"]) == ("1", r1) and (two["version"], two["run_id"]) == ("2", r2)
    got = registry.fetch("models:/digits@production")
    assert got["version"] == "1" and got["run_id"] == r1 and got["source"] == "models:/digits/1"
    assert bundle.digest(got["path"]) == bundle.digest(b1)
    assert str(got["path"]).startswith(str(root / "registry" / "digits" / "1"))
    registry.set_alias("digits", "production", 2)
    moved = registry.fetch("models:/digits@production")
    assert moved["version"] == "2" and bundle.digest(moved["path"]) == bundle.digest(b2)
    assert bundle.digest(registry.fetch("models:/digits/1")["path"]) == bundle.digest(b1)


def test_a_download_draws_no_progress_bar(store, tmp_path, capfd):
    """MLflow's tqdm bar ("Downloading artifacts: 0%|...") was a notebook cell's output when it deployed
    models:/NAME@ALIAS; a user sees cellforge's lines, not MLflow's."""
    root, (b1, _), _ = store
    registry.register(b1, "digits-quiet")
    capfd.readouterr()
    got = registry.fetch("models:/digits-quiet/1", cache=tmp_path / "fresh")  # an empty cache: a download
    assert bundle.digest(got["path"]) == bundle.digest(b1)
    out, err = capfd.readouterr()
    assert "Downloading artifacts" not in out + err and "it/s" not in out + err


def test_unknown_references_are_named(store):
    with pytest.raises(cf.SpecError, match="models:/nope@production: no such registered model version"):
        registry.fetch("models:/nope@production")
    with pytest.raises(cf.SpecError, match="expected models:/NAME@ALIAS"):
        registry.fetch("models:/digits")


def test_a_signed_bundle_is_registered_with_its_signature(store, tmp_path, monkeypatch):
    root, (b1, _), _ = store
    signed = tmp_path / "signed"
    import shutil

    shutil.copytree(b1, signed)
    key, pub = signing.keygen(tmp_path / "k.pem")
    bundle.sign(signed, key)
    got = registry.register(signed, "digits-signed", alias="production")
    monkeypatch.setenv(signing.VERIFY_KEY_ENV, str(pub))
    fetched = registry.fetch("models:/digits-signed@production")
    assert (fetched["path"] / signing.SIGNATURE_FILE).exists() and got["version"] == "1"
    with pytest.raises(cf.BundleError, match="is not signed"):
        registry.fetch("models:/digits/1")


def test_runs_as_a_data_frame_and_side_by_side(store, capsys):
    _, _, (r1, r2) = store
    df = cf.runs(kind="fit")
    assert set(df["run_id"]) >= {r1, r2}
    row = df.set_index("run_id").loc[r2]
    assert row["metrics.test_accuracy"] == pytest.approx(0.7) and row["params.training.lr"] == "0.02"
    table = registry.compare([r1, r2])
    assert list(table.index) == ["params.training.lr", "metrics.loss", "metrics.test_accuracy"]
    assert main(["runs", "list", "--kind", "fit"]) == 0
    out = capsys.readouterr().out
    assert r1 in out and "test_accuracy" in out
    assert main(["runs", "compare", r1, r2]) == 0
    assert "params.training.lr" in capsys.readouterr().out
    assert main(["runs", "compare", r1, "nope"]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


def test_job_files_take_registry_references_and_the_new_steps(tmp_path):
    from cellforge.jobs import parse_job

    job = {"steps": [{"sign": {"bundle": "models:/digits@production", "key": "k.pem"}},
                     {"deploy": {"bundle": "models:/digits@production", "name": "digits", "block": False}}]}
    with pytest.raises(cf.SpecError) as e:
        parse_job(job, tmp_path)
    text = str(e.value)  # a signature needs a bundle on disk; deploy takes the reference
    assert "file not found" in text and "k.pem" in text
    assert "steps.0.sign.bundle: no bundle at" in text and "deploy.bundle" not in text
    ok = {"steps": [{"deploy": {"bundle": "models:/digits@production", "name": "digits", "block": False}},
                    {"register": {"bundle": "b", "name": "bad name!"}}]}
    with pytest.raises(cf.SpecError, match="register.name"):
        parse_job(ok, tmp_path)


def test_a_bundle_without_a_run_gets_a_register_run_in_the_same_store(store, tmp_path, monkeypatch):
    root, (b1, _), _ = store
    monkeypatch.chdir(tmp_path)
    spec, prepared = prepare(cf.ModelSpec(task="classify", hidden_size=8), cf.datasets.load("digits"))
    plain = bundle.save(tmp_path / "plain", spec, ref.init_params(spec, seed=9), prepared.preprocessor.state,
                        {"test": {}})  # no provenance: made before tracking, or elsewhere
    got = registry.register(plain, "plain-digits")
    kept = cf.runs(kind="register").set_index("run_id")
    assert got["run_id"] in kept.index and not (tmp_path / "mlflow.db").exists()
    assert bundle.digest(registry.fetch("models:/plain-digits/1")["path"]) == bundle.digest(plain)
