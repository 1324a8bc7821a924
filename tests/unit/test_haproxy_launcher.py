"""The fast ingress's pieces without a running Ray: HAProxy's admin listeners taken off the config Ray 2.60
really renders, the launcher Ray runs as HAProxy, and the one line when HAProxy cannot run here."""

from __future__ import annotations

import logging
import subprocess

import pytest

from cellforge import _ray, runtime

pytestmark = pytest.mark.unit


@pytest.fixture
def ray_config(tmp_path):
    """The HAProxy config Ray Serve writes for an HTTP frontend on 127.0.0.1 (Ray's own renderer)."""
    from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig
    from ray.serve.config import HTTPOptions

    cfg = HAProxyConfig(http_options=HTTPOptions(host="127.0.0.1", port=18000), socket_path=str(tmp_path / "admin.sock"),
                        server_state_base=str(tmp_path), server_state_file=str(tmp_path / "state"),
                        metrics_socket_path=str(tmp_path / "metrics.sock"))
    api = HAProxyApi(cfg=cfg, config_file_path=str(tmp_path / "haproxy.cfg"))
    api._generate_config_file_internal()
    return tmp_path / "haproxy.cfg"


def binds(config: str) -> list[str]:
    return [line.split()[1] for line in config.splitlines() if line.split()[:1] == ["bind"]]


def test_rays_template_still_opens_the_two_listeners_on_every_interface(ray_config):
    """What the launcher exists for; when Ray changes this, revisit _ray.haproxy_admin_listeners."""
    assert sorted(binds(ray_config.read_text())) == sorted([":9101", "127.0.0.1:18000", "*:8404"])


def test_admin_listeners_go_and_everything_else_stays(ray_config):
    config = ray_config.read_text()
    off = _ray.haproxy_admin_listeners(config, None)
    assert binds(off) == ["127.0.0.1:18000"]
    assert "frontend prometheus" not in off and "listen stats" not in off
    kept = [line for line in config.splitlines() if line not in off.splitlines()]
    assert all(line.startswith(("frontend prometheus", "listen stats", "    ", "  ")) for line in kept)
    on = _ray.haproxy_admin_listeners(config, "127.0.0.1")
    assert sorted(binds(on)) == ["127.0.0.1:18000", "127.0.0.1:8404", "127.0.0.1:9101"]
    assert len(on.splitlines()) == len(config.splitlines())


def test_the_launcher_fixes_the_config_then_runs_haproxy_with_rays_arguments(ray_config, tmp_path, monkeypatch):
    real = runtime._haproxy_binary()
    if not real:
        pytest.skip("no HAProxy binary for this platform")
    launcher = _ray.haproxy_launcher(str(tmp_path / "bin" / "haproxy"), real)
    assert _ray.haproxy_launcher(launcher, real) == launcher  # unchanged: not rewritten
    out = subprocess.run([launcher, "-c", "-f", str(ray_config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr  # HAProxy itself accepts the fixed config
    assert binds(ray_config.read_text()) == ["127.0.0.1:18000"]
    monkeypatch.setenv("CELLFORGE_HAPROXY_STATS_HOST", "127.0.0.1")
    minimal = tmp_path / "again.cfg"
    minimal.write_text("frontend prometheus\n    bind :9101\n    mode http\n")
    subprocess.run([launcher, "-c", "-f", str(minimal)], capture_output=True, timeout=60)
    assert binds(minimal.read_text()) == ["127.0.0.1:9101"]


def test_no_haproxy_here_means_serves_proxy_and_one_line(monkeypatch, tmp_path, capsys):
    runtime._haproxy_binary.cache_clear()
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(tmp_path / "missing"))
    logging.getLogger("cellforge").setLevel(logging.INFO)
    try:
        assert runtime.fast_ingress_env() == {} and runtime.fast_ingress_env() == {}
    finally:
        runtime._haproxy_binary.cache_clear()
    lines = [line for line in capsys.readouterr().out.splitlines() if "HAProxy" in line]
    assert len(lines) == 1 and "Ray Serve's proxy" in lines[0], lines


def test_cellforges_own_launcher_in_the_environment_is_not_wrapped_again(monkeypatch, tmp_path):
    runtime._haproxy_binary.cache_clear()
    real = runtime._haproxy_binary()
    if not real:
        pytest.skip("no HAProxy binary for this platform")
    launcher = _ray.haproxy_launcher(str(tmp_path / "haproxy"), real)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", launcher)
    runtime._haproxy_binary.cache_clear()
    try:
        assert runtime._haproxy_binary() == real
    finally:
        runtime._haproxy_binary.cache_clear()


def test_session_requests_hash_to_one_replica_and_others_round_robin(ray_config, tmp_path, monkeypatch):
    """Ray's real config gets the frontend's session variable and the consistent hash on it; HAProxy
    accepts the result; a balance algorithm the user set is left alone."""
    config = ray_config.read_text()
    assert [line.split() for line in config.splitlines() if line.split()[:1] == ["balance"]] == [["balance", "leastconn"]]
    hashed = _ray.haproxy_session_affinity(config)
    lines = [line.strip() for line in hashed.splitlines()]
    assert "balance hash var(txn.cf_session)" in lines and "hash-type consistent" in lines
    frontend = hashed.split("frontend http_frontend", 1)[1]
    assert "set-var(txn.cf_session) path,field(6,/)" in frontend
    assert len(lines) == len(config.splitlines()) + 2
    real = runtime._haproxy_binary()
    if real:
        path = tmp_path / "hashed.cfg"
        path.write_text(hashed)
        out = subprocess.run([real, "-c", "-f", str(path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BALANCE_ALGORITHM", "roundrobin")
    assert _ray.haproxy_session_affinity(config) == config
    assert _ray.haproxy_session_affinity("global\n    maxconn 10\n") == "global\n    maxconn 10\n"  # a template without the two: unchanged
