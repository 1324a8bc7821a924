"""Traffic control without Ray: which requests a canary takes, the per-version record the live replicas
keep (merged over replicas), when a canary is rolled back by itself, the store's canary record and
session re-pinning (the actor's and Redis' own), and the command line's flags and refusals."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from cellforge.errors import SpecError
from cellforge.serving.sessions import Store
from cellforge.serving.traffic import (
    BUCKETS_MS,
    CanaryConfig,
    VersionStats,
    public,
    takes_canary,
    verdict,
)


# which requests a canary takes ------------------------------------------------------------------------------
@pytest.mark.parametrize("percent", [1, 10, 25, 33.3, 50, 90, 99.5])
def test_a_canary_takes_its_share_of_every_window_spread_evenly(percent):
    picks = [takes_canary(n, percent) for n in range(20_000)]
    assert sum(picks) == pytest.approx(20_000 * percent / 100, abs=1)
    for start in range(0, 20_000 - 1000, 997):  # any window of 1,000 requests holds its share to within one
        assert sum(picks[start:start + 1000]) == pytest.approx(10 * percent, abs=1)
    if percent <= 50:  # never two in a row below a half: a burst of canary requests is not a share
        assert not any(a and b for a, b in zip(picks, picks[1:]))


def test_canary_config_names_each_bad_field():
    for bad, field in (({"canary": 0}, "canary"), ({"canary": 100}, "canary"), ({"canary": "ten"}, "canary"),
                       ({"canary": 10, "max_error_rate": 1.5}, "max_error_rate"),
                       ({"canary": 10, "min_requests": 0}, "min_requests"), ({"canary": 10, "share": 3}, "share")):
        with pytest.raises(SpecError) as e:
            CanaryConfig.parse(bad)
        assert [f for f, _ in e.value.problems] == [field], e.value.problems


# what each version answered -----------------------------------------------------------------------------
def test_version_stats_merge_over_replicas_and_read_quantiles_within_a_bucket():
    rng = np.random.default_rng(0)
    ms = rng.lognormal(np.log(5), 0.8, size=4000)
    a, b = VersionStats(), VersionStats()
    for i, v in enumerate(ms):
        (a if i % 3 else b).add(v / 1000, ok=i % 50 != 0)
    merged = VersionStats.merged([a.to_dict(), b.to_dict()])
    assert (merged.requests, merged.errors) == (4000, 80)
    for q in (0.5, 0.99):  # the bucket's upper bound: at or above the true quantile, by less than 25%
        got, want = merged.quantile_ms(q), np.quantile(ms, q)
        assert want <= got * 1.001 and got <= want * 1.25 + BUCKETS_MS[0], (q, got, want)
    assert merged.summary()["error_rate"] == 0.02
    assert VersionStats().summary() == {"requests": 0, "errors": 0, "error_rate": None, "p50_ms": None, "p99_ms": None}


def test_verdict_rolls_back_only_above_the_rate_with_enough_requests():
    cfg = CanaryConfig(canary=10, max_error_rate=0.05, min_requests=20)
    assert verdict(VersionStats(requests=19, errors=19), cfg) is None  # too few to judge
    assert verdict(VersionStats(requests=100, errors=5), cfg) is None  # at the rate is not above it
    assert "6.0% over 100 requests" in verdict(VersionStats(requests=100, errors=6), cfg)
    assert verdict(VersionStats(requests=1000, errors=1000), CanaryConfig(canary=10)) is None  # by command only
    assert verdict(VersionStats(requests=20, errors=1), CanaryConfig(canary=10, max_error_rate=0)) is not None


# the store's record ----------------------------------------------------------------------------------------------
def _entry(version="v2", **cfg):
    return {"version": version, "app": "m@canary", "config": {"bundle": "/b", "api_key": "secret-key"},
            "sessions": True, **CanaryConfig(canary=10, **cfg).model_dump()}


def test_store_rolls_a_canary_back_on_the_errors_of_all_replicas_together():
    store = Store()
    store.set_canary("m", _entry(max_error_rate=0.5, min_requests=10))
    store.canary("m", "r1"), store.canary("m", "r1"), store.canary("m", "r2")
    assert store.canary("m")["seen"] == ["r1", "r2"]  # the live replicas that have read it (deploy waits on them)
    bad = VersionStats(requests=6, errors=6).to_dict()
    store.report("m", "r1", {"batch_sizes": {}, "versions": {"v2": bad}})
    assert store.canary("m")["state"] == "active"  # 6 requests: fewer than min_requests on their own
    store.report("m", "r2", {"batch_sizes": {}, "versions": {"v2": bad, "v1": VersionStats(requests=30).to_dict()}})
    c = store.canary("m")
    assert c["state"] == "rolled_back" and "100.0% over 12 requests" in c["reason"]
    traffic = store.traffic("m")
    assert traffic["canary"] == public(c) and "config" not in traffic["canary"]  # its deploy config holds keys
    assert traffic["versions"]["v2"]["errors"] == 12 and traffic["versions"]["v1"]["errors"] == 0
    assert store.claim_removal("m", "v2") and not store.claim_removal("m", "v2")  # one replica deletes its app
    assert not store.roll_back("m", "v2", "again")  # already rolled back: the first reason stays
    store.set_canary("m", _entry())  # the same version again, as a new canary: its counts start afresh
    assert store.canary("m")["state"] == "active" and "v2" not in store.traffic("m")["versions"]
    assert store.roll_back("m", "v2", "rolled back by command") and store.canary("m")["reason"] == "rolled back by command"
    store.end_canary("m", "v2")
    assert store.canary("m") is None and store.traffic("m")["canary"] is None


def test_a_session_moves_to_another_version_only_before_its_first_step():
    store = Store()
    sid = store.create("m", "v2", ttl_s=60)
    assert not store.repin(sid, "other-model", "v2", "v1") and not store.repin(sid, "m", "v9", "v1")
    assert store.repin(sid, "m", "v2", "v1") and store.get(sid, "m")["version"] == "v1"
    assert store.advance(sid, 0, ["h"], 4) == "ok"
    assert not store.repin(sid, "m", "v1", "v2")  # it has stepped: its state is v1's
    assert not store.repin("nobody", "m", "v1", "v2")


def test_redis_repins_atomically_as_the_actor_does(tmp_path):
    from _redis_server import RedisServer

    from cellforge.serving.redis_store import RedisSessions

    server = RedisServer(tmp_path / "redis").start()
    try:
        async def go():
            st = RedisSessions(server.url)
            sid = await st.create("m", "v2", 60)
            assert not await st.repin(sid, "other", "v2", "v1") and not await st.repin(sid, "m", "v9", "v1")
            assert await st.repin(sid, "m", "v2", "v1")
            assert (await st.get(sid, "m"))["version"] == "v1"
            assert await st.advance(sid, 0, [np.ones((1, 2), np.float32)], 3, "m") == "ok"
            assert not await st.repin(sid, "m", "v1", "v2") and not await st.repin("nobody", "m", "v1", "v2")
            await st.close()

        asyncio.run(go())
    finally:
        server.stop()


# the command line -----------------------------------------------------------------------------------------------
def test_deploy_takes_canary_flags_and_refuses_bad_ones_naming_them(tmp_path):
    from cellforge.cli import build_parser, step_body
    from cellforge.jobs.steps import DeployStep
    from cellforge.serving.deploy import deploy

    args = build_parser().parse_args(["deploy", "b", "--name", "digits", "--canary", "10", "--max-error-rate", "0.05",
                                      "--min-requests", "50"])
    body = step_body(args.step_class, args)
    assert (body["canary"], body["max_error_rate"], body["min_requests"]) == (10, 0.05, 50)
    with pytest.raises(SpecError) as e:
        DeployStep.parse({"bundle": "b", "name": "digits", "canary": 100, "max_error_rate": 2})
    assert sorted(f for f, _ in e.value.problems) == ["canary", "max_error_rate"]
    with pytest.raises(SpecError) as e:  # refused before Ray or the bundle is touched
        deploy(tmp_path / "missing", "digits", max_error_rate=0.1)
    assert e.value.problems[0][0] == "canary" and "give canary" in e.value.problems[0][1]
    for command in ("promote", "rollback", "canary"):
        assert build_parser().parse_args([command, "digits"]).name == "digits"


def test_canary_report_shows_both_versions_and_why_it_was_rolled_back():
    from cellforge.cli import canary_report

    c = {**public({**_entry(max_error_rate=0.05), "state": "rolled_back", "reason": "error rate 100.0% over 20 "
                   "requests exceeds max_error_rate 5.0%"})}
    text = canary_report({"model": "digits", "version": "v1", "canary": c, "versions": {
        "v1": {"requests": 180, "errors": 0, "error_rate": 0.0, "p50_ms": 2.3, "p99_ms": 9.1},
        "v2": {"requests": 20, "errors": 20, "error_rate": 1.0, "p50_ms": 4.5, "p99_ms": 11.0},
        "v0": {"requests": 3, "errors": 0, "error_rate": 0.0, "p50_ms": 1.9, "p99_ms": 1.9}}})
    head, _, *rows = text.splitlines()
    assert "canary v2 takes 10% of new predictions and sessions (live v1): rolled_back (error rate 100.0%" in head
    assert [r.split()[:2] for r in rows] == [["v1", "live"], ["v2", "canary"], ["v0", "retired"]]
    assert rows[1].split()[4] == "100.00%"


def test_a_draining_replica_of_the_old_version_does_not_describe_the_model_again():
    store = Store()
    store.register("m", {"version": "v1"}, started=100.0)
    store.report("m", "new", {}, {"version": "v2"}, {"bundle": "b2"}, started=200.0)  # the redeploy's replica
    store.report("m", "old", {}, {"version": "v1"}, {"bundle": "b1"}, started=100.0)  # still draining
    assert store.registered()["m"] == {"version": "v2"} and store.config("m") == {"bundle": "b2"}
    store.register("m", {"version": "v3"}, started=300.0)
    assert store.registered()["m"] == {"version": "v3"}
