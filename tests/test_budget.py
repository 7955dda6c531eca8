"""The cluster-wide request budget: concurrency, RPM, TPM, cool-down.

Limits are checked on what the simulator saw arrive (``success_times``):
in no sliding window may more arrive than the budget's rate allows plus its
burst. Where the simulator itself is unlimited, that checks dask-llm's
budget, not the simulator's; where it enforces the same limit, 429s must
stay rare. Anything about a cluster uses real worker processes.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dask
import dask.dataframe as dd
import pandas as pd
import pytest

import dask_llm
from dask_llm import Budget, ConfigError
from dask_llm._budget._alloc import GRACE, RISE_DELAY, Allocator
from dask_llm._coordination import PUSH_GRANT
from dask_llm._coordination._plugin import CoordinatorPlugin
from dask_llm._run._runner import _counted_tokens
from dask_llm.simulator import Simulator, expected_answer

from .conftest import endpoint_for, local_process_cluster

pytestmark = pytest.mark.timeout(120)


def frame(n: int, tag: str = "row") -> pd.DataFrame:
    return pd.DataFrame({"text": [f"{tag} {i}" for i in range(n)]})


def busiest_window(times: Sequence[Sequence[float]], seconds: float, weight: bool = False) -> float:
    """Most requests (or tokens charged, with ``weight``) that arrived within
    any ``seconds``-long window."""
    pts = sorted((t, (c if weight else 1.0)) for t, c in times)
    best = total = 0.0
    lo = 0
    for hi in range(len(pts)):
        total += pts[hi][1]
        while pts[hi][0] - pts[lo][0] >= seconds:
            total -= pts[lo][1]
            lo += 1
        best = max(best, total)
    return best


def allowed(per_minute: float, window: float, burst: float) -> float:
    """What a budget of ``per_minute`` admits in ``window`` seconds at most:
    the rate plus one burst, with 5% for clock skew between processes."""
    return per_minute / 60 * (window + burst) * 1.05 + 2


# -- the value object ------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_concurrency": 0},
        {"max_concurrency": 2.5},
        {"max_concurrency": True},
        {"rpm": 0},
        {"rpm": -5},
        {"tpm": float("inf")},
        {"rpm": "100"},
        {"name": ""},
        {"burst": 0},
    ],
)
def test_budget_rejects_bad_limits(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Budget(**kwargs)


def test_budget_identity_and_defaults() -> None:
    a, b = Budget(rpm=100), Budget(rpm=100)
    # Two budgets are two budgets unless they are given one name.
    assert a.name != b.name and a != b
    assert Budget(rpm=100, name="acct") == Budget(rpm=100, name="acct")
    # It travels inside the task graph.
    assert pickle.loads(pickle.dumps(a)) == a and hash(a) == hash(pickle.loads(pickle.dumps(a)))
    # Adaptive exactly when no limit is known.
    assert Budget().adaptive is True
    assert Budget(rpm=10).adaptive is False and Budget(tpm=10).adaptive is False
    assert Budget(adaptive=True, rpm=10).adaptive is True


def test_enrich_rejects_a_budget_of_the_wrong_type(sim: Simulator) -> None:
    with pytest.raises(ConfigError, match="budget="):
        bad: Any = {"rpm": 10}
        dask_llm.enrich(frame(2), "{text}", "a", "m", endpoint=endpoint_for(sim), budget=bad)


def test_tokens_counted_as_the_provider_counts_them() -> None:
    req = {"messages": [], "max_tokens": 50}
    # max_tokens is reserved at admission and not given back for a short answer.
    assert _counted_tokens(req, 10, 3, reserved=99) == 60
    assert _counted_tokens({"messages": []}, 10, 3, reserved=99) == 13
    # No usage in the response: the reservation stands.
    assert _counted_tokens(req, None, None, reserved=99) == 99


# -- the allocator (scheduler side), on a fake clock --------------------------------


def test_shares_never_add_up_to_more_than_the_limit() -> None:
    alloc = Allocator(rpm=600, tpm=60_000, adaptive=False, now=0.0)
    a, _ = alloc.lease("a", demand=8, now=0.0)
    assert (a.rpm, a.tpm, a.slots) == (600, 60_000, None)
    b, pushed = alloc.lease("b", demand=8, now=1.0)
    # The newcomer's share is carved out of a's at once, by a push.
    assert b.rpm == 300 and pushed["a"].rpm == 300 and pushed["a"].tpm == 30_000
    c, pushed = alloc.lease("c", demand=16, now=2.0)
    assert c.rpm == 300 and {h: g.rpm for h, g in pushed.items()} == {"a": 150, "b": 150}
    # b leaves: its share goes to the others, pushed a moment later (tick).
    assert alloc.release("b", now=3.0) == {} and alloc.tick(now=3.5) == {}
    pushed = alloc.tick(now=3.0 + RISE_DELAY)
    assert {h: g.rpm for h, g in pushed.items()} == {"a": 200, "c": 400}
    # A holder that stops renewing (a wedged or dead worker) loses its share.
    later = 2.0 + alloc.ttl + GRACE + 0.1
    assert alloc.lease("a", demand=8, now=later)[0].rpm == 600


def test_holders_releasing_one_after_another_cost_one_push_per_holder_left() -> None:
    # A job's end: every holder goes idle within a second. Rises pushed at
    # each release would go to holders about to release too.
    alloc = Allocator(rpm=600, tpm=None, adaptive=False, now=0.0, max_concurrency=12)
    for h in "abcd":
        alloc.lease(h, demand=4, now=0.0)
    assert alloc.release("a", now=10.0) == {} and alloc.release("b", now=10.4) == {}
    assert alloc.release("c", now=10.8) == {}
    pushed = alloc.tick(now=10.0 + RISE_DELAY)
    assert set(pushed) == {"d"} and pushed["d"].rpm == 600 and pushed["d"].slots == 4
    assert alloc.tick(now=20.0) == {}  # nothing more to tell
    # The parts are the stayers' as soon as the others leave: a renewal in
    # between gets them, and then there is nothing to push.
    alloc.release("d", now=30.0)
    for h in "xy":
        alloc.lease(h, demand=8, now=30.0)
    alloc.release("x", now=40.0)
    assert alloc.lease("y", demand=8, now=40.2)[0].rpm == 600
    assert alloc.tick(now=40.0 + RISE_DELAY) == {}


def test_slots_taken_back_are_given_out_only_once_acknowledged() -> None:
    alloc = Allocator(rpm=600, tpm=None, adaptive=False, now=0.0, max_concurrency=16)
    # Holders get what their threads want while there are slots to spare.
    a, _ = alloc.lease("a", demand=8, now=0.0)
    b, pushed = alloc.lease("b", demand=8, now=0.1)
    assert (a.slots, b.slots, pushed.get("a", a).slots) == (8, 8, 8) and not b.contended
    # A third holder: fair parts water-filled by demand (6, 5, 5), but the
    # others' slots are theirs until they report: c waits, with no rate either.
    c, pushed = alloc.lease("c", demand=16, now=0.3)
    assert (c.slots, c.rpm) == (0, 0) and c.contended
    assert {h: g.slots for h, g in pushed.items()} == {"a": 6, "b": 5}
    # A report counted under the grant before the push frees nothing the
    # earlier grant allowed: a may not have seen the push yet.
    stale = alloc.lease("a", demand=8, now=0.4, in_use=0, applied=a.seq)[0]
    assert alloc.slot_stats()["a"]["bound"] == 8 and alloc.slot_stats()["c"]["slots"] == 0
    # Counted under the lowered grant: 2 of a's are free, and go to c, with
    # a share of the rate.
    _, pushed = alloc.lease("a", demand=8, now=0.5, in_use=5, applied=stale.seq)
    assert pushed["c"].slots == 2 and pushed["c"].rpm > 0 and alloc.slot_stats()["a"]["bound"] == 6
    assert sum(r["bound"] for r in alloc.slot_stats().values()) <= 16
    # Leaving frees everything at once (told RISE_DELAY later).
    assert alloc.release("b", now=0.6) == {}
    assert sum(r["bound"] for r in alloc.slot_stats().values()) <= 16
    pushed = alloc.tick(now=0.6 + RISE_DELAY)
    assert pushed["c"].slots == 8  # half of 16, a and c wanting 8 and 16
    # Dying frees the rate at once, the slots only once the dead holder's
    # calls may be over at the provider.
    from dask_llm._budget._alloc import DEPARTED_HOLD

    pushed = alloc.remove("a", now=2.0)
    assert pushed["c"].rpm == 600 and pushed["c"].slots == 8  # a's 8 still count
    assert alloc.tick(now=2.0 + DEPARTED_HOLD / 2) == {}
    assert alloc.tick(now=2.0 + DEPARTED_HOLD)["c"].slots == 16


def test_slots_never_exceed_max_concurrency_whatever_the_message_order() -> None:
    """Holders that take and give back slots, renew, and receive their pushes
    late and out of order: the slots in use never add up to more than
    max_concurrency, and once everything is delivered every holder that
    wants slots has its fair part."""
    import random

    from dask_llm._budget._alloc import Grant

    rng = random.Random(7)
    mc = 12
    alloc = Allocator(rpm=None, tpm=None, adaptive=False, now=0.0, max_concurrency=mc)
    holders = {h: {"cap": 0, "seq": -1, "in_use": 0, "want": 0, "inbox": []} for h in "abcd"}

    def apply(h: str, g: Grant) -> None:
        st = holders[h]
        if g.seq > st["seq"]:
            st["cap"], st["seq"] = g.slots, g.seq

    def lease(h: str, now: float) -> None:
        st = holders[h]
        grant, pushed = alloc.lease(h, demand=max(1, st["want"]), now=now, in_use=st["in_use"], applied=st["seq"])
        for other, g in pushed.items():
            holders[other]["inbox"].append(g)
        apply(h, grant)

    for step in range(4000):
        now = step * 0.001
        h = rng.choice("abcd")
        st = holders[h]
        action = rng.random()
        if action < 0.2:
            st["want"] = rng.choice([0, 1, 3, 8, 16])
            lease(h, now)
        elif action < 0.45 and st["inbox"]:
            apply(h, st["inbox"].pop(rng.randrange(len(st["inbox"]))))  # out of order
        elif action < 0.7:
            if st["in_use"] < min(st["cap"], st["want"]):
                st["in_use"] += 1
        elif action < 0.9:
            if st["in_use"] > 0:
                st["in_use"] -= 1
        elif action < 0.95 and st["in_use"] == 0:
            # Idle: it hands its part back (pushes sent before are ignored).
            for other, g in alloc.release(h, now).items():
                holders[other]["inbox"].append(g)
            st.update(cap=0, seq=alloc.seq, inbox=[])
        else:
            lease(h, now)
        for other, g in alloc.tick(now).items():  # the rises a release deferred
            holders[other]["inbox"].append(g)
        assert sum(x["in_use"] for x in holders.values()) <= mc, step
    # Settle: deliver everything, let each take what it may and report.
    for _ in range(4):
        for h, st in holders.items():
            while st["inbox"]:
                apply(h, st["inbox"].pop(0))
            st["in_use"] = min(st["cap"], st["want"])
            lease(h, 5.0)
    wanted = {h: st["want"] for h, st in holders.items()}
    if sum(wanted.values()) >= mc:
        assert sum(st["cap"] for st in holders.values()) == mc
    assert all(st["cap"] >= min(st["want"], mc // 4) for st in holders.values()), holders


def test_a_429_pauses_every_other_holder() -> None:
    alloc = Allocator(rpm=600, tpm=None, adaptive=False, now=0.0)
    for h in "abc":
        alloc.lease(h, demand=4, now=0.0)
    pushed = alloc.penalize("a", 7.0, now=1.0)
    assert sorted(pushed) == ["b", "c"] and all(g.cooldown == 7.0 for g in pushed.values())
    # A shorter penalty inside the running cool-down tells nobody anything new.
    assert alloc.penalize("b", 2.0, now=2.0) == {}
    assert alloc.lease("d", demand=1, now=3.0)[0].cooldown == pytest.approx(5.0)
    # Fixed limits do not move on a 429.
    assert alloc.rpm == 600


def test_adaptive_rate_backs_off_on_429_and_probes_upward_when_clean() -> None:
    alloc = Allocator(rpm=None, tpm=None, adaptive=True, now=0.0)
    # No limit until the provider objects. "observed": what it answered.
    alloc.lease("a", demand=4, now=1.0, observed=700.0)
    alloc.lease("b", demand=4, now=1.0, observed=500.0)
    assert alloc.rpm is None
    for k in range(5):  # one overload episode, many 429s: one decrease
        alloc.penalize("a", 0.5, now=2.0 + 0.01 * k)
    assert alloc.rpm == pytest.approx(0.9 * 1200)  # a little under what was answered
    # Clean and held back by the budget: probe upward, one step per interval.
    alloc.lease("a", demand=4, now=3.0, saturated=True, observed=700.0)
    assert alloc.rpm == pytest.approx(1080)
    alloc.lease("a", demand=4, now=5.0, saturated=True, observed=560.0)
    assert alloc.rpm == pytest.approx(1188)
    # Not held back by the budget: no reason to probe.
    alloc.lease("a", demand=4, now=9.0, saturated=False, observed=560.0)
    assert alloc.rpm == pytest.approx(1188)
    # Another episode: under what is answered now (560 + 500), never above the rate in force.
    alloc.lease("b", demand=4, now=9.5, observed=500.0)
    alloc.penalize("b", 1.0, now=10.0, observed=500.0)
    assert alloc.rpm == pytest.approx(0.9 * 1060)
    # Nothing answered at all: a slow start, then halving.
    starved = Allocator(rpm=None, tpm=None, adaptive=True, now=0.0)
    starved.lease("a", demand=1, now=0.0)
    starved.penalize("a", 1.0, now=1.0)
    assert starved.rpm == pytest.approx(60.0)
    starved.penalize("a", 1.0, now=3.0)
    assert starved.rpm == pytest.approx(30.0)
    # The provider's announced limit caps the rate, and then a 429 (another
    # client of the account) costs a cool-down, not speed.
    alloc.lease("a", demand=4, now=11.0, learned={"rpm": 200.0})
    assert alloc.rpm == 200
    alloc.penalize("a", 1.0, now=20.0, observed=200.0)
    assert alloc.rpm == 200
    capped = Allocator(rpm=300, tpm=None, adaptive=False, now=0.0)
    capped.lease("a", demand=1, now=0.0, learned={"rpm": 500.0, "tpm": 9000.0})
    assert (capped.rpm, capped.tpm) == (300, 9000)


def test_an_adaptive_budget_renews_often_only_while_it_probes_a_rate() -> None:
    from dask_llm._budget._alloc import ADAPTIVE_TTL, LEASE_TTL, Grant

    alloc = Allocator(rpm=None, tpm=None, adaptive=True, now=0.0)
    # No rate yet, nothing to probe: renewals as rare as a fixed budget's.
    first = {h: alloc.lease(h, demand=d, now=0.0)[0] for h, d in (("a", 8), ("b", 8), ("c", 16))}
    assert {g.ttl for g in first.values()} == {LEASE_TTL}
    # The first 429 comes before anyone renewed: the others are counted at
    # the reporting holder's rate per thread, and told at once to renew often.
    pushed = alloc.penalize("a", 1.0, now=1.0, observed=300.0)
    assert alloc.rpm == pytest.approx(0.9 * (300 + 300 + 600))
    assert set(pushed) == {"b", "c"} and all(g.ttl <= ADAPTIVE_TTL for g in pushed.values())
    assert alloc.lease("a", demand=8, now=1.5)[0].ttl == ADAPTIVE_TTL
    # A holder receiving that push renews on the shorter schedule.
    from dask_llm._budget import _process

    class Link:
        holder = "b"

        def lease(self, *args: Any) -> Grant:
            return first["b"]

    pb = _process.ProcessBudget(Budget(name="probe"), Link())  # type: ignore[arg-type]
    pb._renew(expected=8)
    assert pb._renew_at > time.monotonic() + LEASE_TTL / 3
    _process._budgets[("probe", "b")] = pb
    try:
        _process._on_push("b", "probe", pushed["b"].to_msg())
    finally:
        del _process._budgets[("probe", "b")]
    assert pb._renew_at <= time.monotonic() + ADAPTIVE_TTL
    # The provider announces its limit: nothing left to probe.
    assert alloc.lease("a", demand=8, now=2.0, learned={"rpm": 900.0})[0].ttl == LEASE_TTL


def test_stray_429s_cost_the_row_its_wait_not_everyone_a_pause() -> None:
    from dask_llm._budget._alloc import Grant
    from dask_llm._budget._process import ProcessBudget

    class Link:
        holder = "h"

        def __init__(self) -> None:
            self.penalties: list[tuple[float, float, float]] = []

        def lease(self, *args: Any) -> Grant:
            return Grant(rpm=None, tpm=None, ttl=30.0)

        def release(self) -> None:
            pass

        def penalize(self, seconds: float, observed: float, sent: float) -> None:
            self.penalties.append((seconds, observed, sent))

    link = Link()
    pb = ProcessBudget(Budget(), link)
    pb.reservoir.apply(Grant(rpm=None, tpm=None, ttl=30.0, seq=1))
    pb._samples.append((time.monotonic(), 0, 0, 0))

    def answer(ok: int, limited: int) -> None:
        pb.reservoir.taken += ok + limited
        pb.reservoir.answered += ok
        for _ in range(limited):
            pb.penalize(2.0)

    # One 429 in twenty requests, then two more in sixty: stray, the others go on.
    answer(19, 1)
    answer(58, 2)
    assert link.penalties == [] and pb.reservoir.cooldown_until < time.monotonic()
    # Then most requests refused: a real limit. Everyone pauses, and the coordinator is told.
    answer(5, 20)
    assert len(link.penalties) == 1 and link.penalties[0][0] == 2.0
    assert pb.reservoir.cooldown_until > time.monotonic() + 1.5


def test_a_429_before_any_answer_halves_the_rate_sent() -> None:
    # A job's first wave refused (another job emptied the account's bucket):
    # half of what was sent, not a fixed floor that would hold a fast endpoint for minutes.
    first = Allocator(rpm=None, tpm=None, adaptive=True, now=0.0)
    first.lease("a", demand=16, now=0.0)
    first.penalize("a", 1.0, now=0.5, observed=0.0, sent=960.0)
    assert first.rpm == pytest.approx(480.0)


def test_probing_takes_full_steps_again_once_past_where_the_429s_came() -> None:
    alloc = Allocator(rpm=None, tpm=None, adaptive=True, now=0.0)
    alloc.lease("a", demand=4, now=0.0, observed=1000.0)
    alloc.penalize("a", 1.0, now=1.0)
    assert alloc.rpm == pytest.approx(900.0)  # 0.9 x what was answered; the 429s came at 1,000
    rates = []
    for k in range(4):
        alloc.lease("a", demand=4, now=3.0 + 2.0 * k, saturated=True)
        rates.append(alloc.rpm)
    # +10%; then +2% while near 1,000; past it, clean, +10% again (not +2% for ever).
    assert rates == pytest.approx([990.0, 1009.8, 1110.78, 1221.858])


class _FakeScheduler:
    def __init__(self, workers: Sequence[str]) -> None:
        self.handlers: dict[str, Any] = {}
        self.extensions: dict[str, Any] = {}
        self.stream_comms = dict.fromkeys(workers)
        self.periodic_callbacks: dict[str, Any] = {}
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def worker_send(self, worker: str, msg: dict[str, Any]) -> None:
        self.sent.append((worker, msg))

    def get_events(self) -> dict[str, tuple[tuple[float, Any], ...]]:
        return {}


def test_scheduler_plugin_reassigns_a_dead_workers_share_and_guards_limits() -> None:
    import asyncio

    sched = _FakeScheduler(["w1", "w2"])
    plugin = CoordinatorPlugin()

    async def start() -> None:
        await plugin.start(sched)
        for pc in sched.periodic_callbacks.values():
            pc.stop()

    asyncio.run(start())
    assert "dask_llm_budget_lease" in sched.handlers
    limits = Budget(rpm=600, name="acct").limits()
    lease = sched.handlers["dask_llm_budget_lease"]  # what a worker's call runs
    lease(holder="w1", name="acct", limits=limits, demand=4)
    lease(holder="w2", name="acct", limits=limits, demand=4)
    assert sched.sent[-1][0] == "w1" and sched.sent[-1][1]["grant"]["rpm"] == 300
    # Same name, other limits, while in use: refused.
    with pytest.raises(ConfigError, match="acct"):
        lease(holder="w1", name="acct", limits=Budget(rpm=900, name="acct").limits(), demand=4)
    # w2 dies: w1 gets the whole rate at once.
    del sched.stream_comms["w2"]
    plugin.remove_worker(sched, "w2")
    worker, msg = sched.sent[-1]
    assert (worker, msg["op"], msg["grant"]["rpm"]) == ("w1", PUSH_GRANT, 600)


# -- in-process, without a cluster --------------------------------------------------


def test_budget_holds_in_process_without_a_cluster(start_sim: Callable[..., Simulator]) -> None:
    sim = start_sim(mode="echo", latency=0.02)  # no limit of its own
    budget = Budget(rpm=3000, max_concurrency=6)
    ddf = dd.from_pandas(frame(150), npartitions=3)
    out = dask_llm.enrich(ddf, "{text}", "a", "m", endpoint=endpoint_for(sim), threads=16, budget=budget)
    result = out.compute(scheduler="threads")
    assert result["a"].tolist() == [f"row {i}" for i in range(150)]
    stats = sim.stats()
    assert stats["max_in_flight"] <= 6
    assert busiest_window(stats["success_times"], 1.0) <= allowed(3000, 1.0, budget.burst)


# -- on a cluster of worker processes ----------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Three worker processes, two task threads each."""
    with local_process_cluster(3) as client:
        yield client


def run(ddf: dd.DataFrame, sim: Simulator, budget: Budget, **kwargs: Any) -> dd.DataFrame:
    kwargs.setdefault("threads", 16)
    return dask_llm.enrich(ddf, "{text}", "a", "m", endpoint=endpoint_for(sim), budget=budget, **kwargs)


def test_rpm_is_one_budget_for_all_workers(cluster: Any, start_sim: Callable[..., Simulator]) -> None:
    sim = start_sim(mode="echo", latency=0.05)  # unlimited: only the budget holds the rate
    budget = Budget(rpm=3000)
    result = run(dd.from_pandas(frame(240), npartitions=6), sim, budget).compute()
    assert result["a"].tolist() == [f"row {i}" for i in range(240)]
    times = sim.stats()["success_times"]
    # 3 workers x 2 partitions x 16 threads would do ~2,000 requests/s unchecked,
    # and a per-worker budget 3x the limit.
    for window in (1.0, 3.0):
        assert busiest_window(times, window) <= allowed(3000, window, budget.burst)
    # Every worker took part.
    assert len(cluster.run_on_scheduler(_budget_stats, name=budget.name)["seen"]) == 3


def test_provider_limit_is_met_with_rare_429s(cluster: Any, start_sim: Callable[..., Simulator]) -> None:
    sim = start_sim(mode="echo", latency=0.05, rpm=3600, burst_seconds=2.0)
    ddf = dd.from_pandas(frame(320), npartitions=6)
    result = run(ddf, sim, Budget(rpm=3600)).compute()
    stats = sim.stats()
    assert result["a_error"].isna().all()
    expected = [expected_answer([{"role": "user", "content": t}], "echo") for t in frame(320)["text"]]
    assert result["a"].tolist() == expected
    assert stats["rate_limited"] <= 0.01 * stats["requests"]


def test_tpm_is_one_budget_for_all_workers(cluster: Any, start_sim: Callable[..., Simulator]) -> None:
    sim = start_sim(mode="echo", latency=0.05)
    budget = Budget(tpm=60_000)  # ~30 tokens a request: ~33 requests/s
    ddf = dd.from_pandas(frame(200, tag="a longer row of text, number"), npartitions=6)
    result = run(ddf, sim, budget, max_tokens=16).compute()
    assert result["a_error"].isna().all()
    times = sim.stats()["success_times"]
    # Tokens as charged by the provider (prompt + max_tokens), per window.
    for window in (1.0, 3.0):
        assert busiest_window(times, window, weight=True) <= allowed(60_000, window, budget.burst)


def test_concurrency_is_capped_across_workers(cluster: Any, start_sim: Callable[..., Simulator]) -> None:
    sim = start_sim(mode="echo", latency=0.1)
    budget = Budget(max_concurrency=5)
    result = run(dd.from_pandas(frame(120), npartitions=6), sim, budget, threads=8).compute()
    assert result["a_error"].isna().all()
    assert 2 <= sim.stats()["max_in_flight"] <= 5
    stats = cluster.run_on_scheduler(_budget_stats, name=budget.name)
    assert len(stats["seen"]) == 3  # every worker had a part of the 5
    # A slot costs no message: a handful per worker, not one per thread or row.
    assert sum(stats["messages"].values()) < 40, stats["messages"]
    # Slots go back to the scheduler once the workers are idle: nothing leaks.
    assert _slots_held_after_idle(cluster, budget) == 0


def _slots_held_after_idle(cluster: Any, budget: Budget, within: float = 15.0) -> int:
    deadline = time.monotonic() + within
    while True:
        slots = cluster.run_on_scheduler(_budget_stats, name=budget.name)["slots"]
        held = sum(s["bound"] for s in slots.values())
        if held == 0 or time.monotonic() > deadline:
            return held
        time.sleep(0.2)


def test_two_jobs_with_one_shared_budget(cluster: Any, start_sim: Callable[..., Simulator]) -> None:
    sim = start_sim(mode="echo", latency=0.05)
    shared = Budget(rpm=3000)
    one = run(dd.from_pandas(frame(120, "first"), npartitions=3), sim, shared)
    two = run(dd.from_pandas(frame(120, "second"), npartitions=3), sim, shared)
    r1, r2 = dask.compute(one, two)
    assert r1["a_error"].isna().all() and r2["a_error"].isna().all()
    # Together, not each, within the one limit.
    assert busiest_window(sim.stats()["success_times"], 3.0) <= allowed(3000, 3.0, shared.burst)


def test_two_jobs_with_separate_budgets(cluster: Any, start_sim: Callable[..., Simulator]) -> None:
    sims = [start_sim(mode="echo", latency=0.05) for _ in range(2)]
    budgets = [Budget(rpm=2400), Budget(rpm=1200)]
    jobs = [
        run(dd.from_pandas(frame(n), npartitions=3), s, b) for n, s, b in zip((160, 80), sims, budgets, strict=False)
    ]
    results = dask.compute(*jobs)
    assert all(r["a_error"].isna().all() for r in results)
    for s, b in zip(sims, budgets, strict=False):
        assert b.rpm is not None
        assert busiest_window(s.stats()["success_times"], 2.0) <= allowed(b.rpm, 2.0, b.burst)


def _hold_and_penalize(budget: Budget, penalize: bool) -> float:
    """On a worker: join the budget; one worker penalizes, the others report
    how much cool-down they see once it has."""
    from distributed import Event

    from dask_llm._budget._process import limiter_for
    from dask_llm._coordination import current

    limiter = limiter_for(budget, current())
    joined, penalized = Event(f"{budget.name}-joined"), Event(f"{budget.name}-penalized")
    with limiter.lease():
        limiter.acquire(1)
        if penalize:
            # Wait until the others hold a share (they are pushed to only then).
            time.sleep(1.0)
            # Three requests, three 429s: a limit, not a stray 429.
            for _ in range(2):
                limiter.acquire(1)
            for _ in range(3):
                limiter.penalize(6.0)
            penalized.set()
            return 6.0
        joined.set()
        penalized.wait(timeout=20)
        time.sleep(0.5)
        return limiter.reservoir.cooldown_until - time.monotonic()  # type: ignore[attr-defined]


def test_a_429_on_one_worker_pauses_the_others(cluster: Any) -> None:
    budget = Budget(rpm=600)
    workers = sorted(cluster.scheduler_info()["workers"])
    futures = [
        cluster.submit(_hold_and_penalize, budget, i == 0, workers=[w], pure=False, allow_other_workers=False)
        for i, w in enumerate(workers)
    ]
    waits = cluster.gather(futures)
    assert waits[0] == 6.0
    # The others learned of it by a push, within well under a second.
    assert all(w > 4.0 for w in waits[1:]), waits


def test_unknown_limits_are_learned(cluster: Any, start_sim: Callable[..., Simulator]) -> None:
    sim = start_sim(mode="echo", latency=0.05, rpm=2400, burst_seconds=2.0)
    budget = Budget()  # adaptive: no limits given
    result = run(dd.from_pandas(frame(150), npartitions=3), sim, budget).compute()
    assert result["a_error"].isna().all()
    stats = cluster.run_on_scheduler(_budget_stats, name=budget.name)
    # x-ratelimit-limit-requests told every worker the real limit.
    assert stats["rpm"] == 2400
    assert sim.stats()["rate_limited"] <= 0.02 * sim.stats()["requests"]


def _budget_stats(dask_scheduler: Any, name: str) -> dict[str, Any]:
    return dask_scheduler.plugins["dask-llm"].state.budget_stats(name)


def test_a_dead_worker_leaks_no_budget(cluster: Any, start_sim: Callable[..., Simulator]) -> None:
    import os
    import signal

    sim = start_sim(mode="echo", latency=0.1)
    budget = Budget(max_concurrency=4, rpm=6000)
    future = cluster.compute(run(dd.from_pandas(frame(100), npartitions=6), sim, budget, threads=4))
    deadline = time.monotonic() + 30
    while sim.stats()["successes"] < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    # Kill a worker process that holds part of the budget, mid-job.
    holders = cluster.run_on_scheduler(_budget_stats, name=budget.name)["holders"]
    victim = holders[0]
    pid = cluster.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)
    result = future.result(timeout=60)
    assert result["a_error"].isna().all() and len(result) == 100
    assert sim.stats()["max_in_flight"] <= 4
    # Its share went to the others, and its slots came back: once every
    # worker is idle, nothing is held.
    assert _slots_held_after_idle(cluster, budget, within=20) == 0
    assert victim not in cluster.run_on_scheduler(_budget_stats, name=budget.name)["holders"]
    cluster.wait_for_workers(3, timeout=30)  # the nanny brought a new one up
