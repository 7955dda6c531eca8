"""The authoritative state of one budget: who holds which share of the rate.

An :class:`Allocator` lives in exactly one place per budget (the scheduler,
or the process itself without a cluster). It does not hand out requests one
by one: it grants each holder (a worker process) a *share* of the requests
and tokens per minute, valid for ``ttl`` seconds, which the holder's
reservoir spends at that pace. A grant is a batch of ``share * ttl`` units
delivered as a steady refill, so coordination costs one message per holder
per renewal instead of one per request, and the cluster's requests arrive
evenly spread instead of in per-batch bursts.

Invariant: the shares of unexpired grants add up to at most the limit.
A holder that joins, leaves or changes its demand changes the others'
shares; the caller pushes those revised grants (see :meth:`Allocator.lease`).

Pure logic on a caller-supplied clock, so it is tested without a cluster.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["LEASE_TTL", "PUSH_GRANT", "Allocator", "Grant"]

#: The push (coordinator to holder) of a revised grant.
PUSH_GRANT = "dask-llm-budget-grant"

#: Seconds a grant is valid; holders renew at half of it (or sooner when
#: their demand changes). Revisions in between are pushed, so this only
#: bounds how long a wedged holder keeps its share.
LEASE_TTL = 30.0
#: Shorter validity in adaptive mode: holders report saturation at each
#: renewal, which is what lets the rate probe upward.
ADAPTIVE_TTL = 4.0
#: The scheduler keeps a share reserved this much longer than the holder
#: uses it, to cover the message's travel time.
GRACE = 1.0
#: A revised share is pushed to a holder when it moves by more than this.
PUSH_THRESHOLD = 0.05

#: Adaptive rate: no limit until the first 429, then a little under the rate
#: the provider was answering (or half the rate, when nothing was answered),
#: then +10% steps while clean and saturated.
ADAPTIVE_FALLBACK_RPM = 60.0
ADAPTIVE_MIN_RPM = 6.0
ADAPTIVE_DECREASE = 0.5
#: After a 429, the rate settles at this share of the rate the provider answered.
ADAPTIVE_SETTLE = 0.9
#: 429s that go on at the rate in force take it down by this factor a second.
ADAPTIVE_STEP_DOWN = 0.85
ADAPTIVE_INCREASE = 1.1
#: ... and this slower step once it nears the rate at which the last 429s came.
ADAPTIVE_CREEP = 1.02
#: Seconds of clean, saturated running between two increases.
ADAPTIVE_PROBE = 2.0


@dataclass(frozen=True)
class Grant:
    """One holder's part of a budget, as sent over the wire.

    ``rpm``/``tpm`` are the holder's share per minute (``None``: no limit of
    that kind); ``ttl`` seconds of validity from receipt; ``cooldown``
    seconds during which no request may start; ``contended``: other holders
    wait for concurrency slots; ``slots``: the holder's fair part of the
    concurrency slots, which it keeps even then (``None``: no cap); ``seq``
    orders grants that travel by different routes (reply and push).
    """

    rpm: float | None
    tpm: float | None
    ttl: float
    cooldown: float = 0.0
    contended: bool = False
    slots: int | None = None
    seq: int = 0  # grants of one budget in the order issued; a stale one is ignored

    def to_msg(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_msg(cls, msg: dict[str, Any]) -> Grant:
        return cls(**msg)


@dataclass
class _Holder:
    demand: float
    expires: float
    observed: float = 0.0
    rpm: float | None = None
    tpm: float | None = None
    slots: int | None = None


class Allocator:
    """Shares of one budget's RPM and TPM, and its shared cool-down.

    Parameters
    ----------
    rpm, tpm : float, optional
        The limits set by the user (``None``: none of that kind).
    adaptive : bool
        Find the request rate from 429s (see :class:`~dask_llm.Budget`).
    now : float
        Current time of the caller's monotonic clock.
    max_concurrency : int, optional
        Concurrency slots, shared out like the rates (as fair parts).
    """

    def __init__(
        self, rpm: float | None, tpm: float | None, adaptive: bool, now: float, max_concurrency: int | None = None
    ) -> None:
        self.user_rpm, self.user_tpm = rpm, tpm
        self.max_concurrency = max_concurrency
        self.adaptive = adaptive
        self.learned_rpm: float | None = None
        self.learned_tpm: float | None = None
        self.rate: float | None = None  # adaptive request rate; None until a 429
        self.ceiling: float | None = None  # the rate in force at the last decrease
        self.last_change = now
        self.last_429 = -float("inf")
        self.cooldown_until = now
        self.holders: dict[str, _Holder] = {}
        self.seq = 0
        self.ttl = ADAPTIVE_TTL if adaptive else LEASE_TTL

    # -- the limits in force -------------------------------------------------

    @property
    def rpm(self) -> float | None:
        """Requests per minute in force: the lowest of the user's limit, the
        provider's announced limit and (adaptive mode) the probed rate."""
        candidates = [x for x in (self.user_rpm, self.learned_rpm, self.rate) if x is not None]
        return min(candidates) if candidates else None

    @property
    def tpm(self) -> float | None:
        candidates = [x for x in (self.user_tpm, self.learned_tpm) if x is not None]
        return min(candidates) if candidates else None

    # -- holders -----------------------------------------------------------------

    def lease(
        self,
        holder: str,
        demand: float,
        now: float,
        *,
        learned: dict[str, float] | None = None,
        saturated: bool = False,
        observed: float = 0.0,
    ) -> tuple[Grant, dict[str, Grant]]:
        """Renew (or start) ``holder``'s grant.

        Parameters
        ----------
        holder : str
            Identity of the process (a worker address).
        demand : float
            Its weight: the runner threads it keeps busy on this budget.
        learned : dict, optional
            ``{"rpm": ..., "tpm": ...}`` from the provider's
            ``x-ratelimit-limit-*`` headers, as the holder saw them.
        saturated : bool
            Whether the holder's requests waited for budget since its last
            renewal (adaptive mode probes upward only then).
        observed : float
            Requests per minute the provider answered for the holder since
            its last renewal (429s and failures excluded).

        Returns
        -------
        (Grant, dict)
            The holder's grant, and revised grants for other holders whose
            share moved enough to be worth a push.
        """
        self._expire(now)
        for what, value in (learned or {}).items():
            if value and value > 0:
                current = getattr(self, f"learned_{what}")
                # The lowest announced limit wins: one budget may span
                # deployments with different limits.
                if current is None or value < current:
                    setattr(self, f"learned_{what}", float(value))
                    if what == "rpm":
                        self.rate = None  # the provider's word replaces the guess
        if self.adaptive and saturated:
            self._probe(now)
        self.holders[holder] = _Holder(max(float(demand), 1.0), now + self.ttl + GRACE, observed=observed)
        return self._grant(holder, now), self._revisions(now, exclude=holder)

    def release(self, holder: str, now: float) -> dict[str, Grant]:
        """``holder`` has gone idle or away: share its part among the rest."""
        self._expire(now)
        if self.holders.pop(holder, None) is None:
            return {}
        return self._revisions(now, exclude=holder)

    def penalize(
        self,
        holder: str | None,
        seconds: float,
        now: float,
        observed: float | None = None,
        sent: float | None = None,
    ) -> dict[str, Grant]:
        """A 429 answered ``holder``: everyone pauses ``seconds``.

        ``observed`` is the rate (per minute) the provider answered the holder
        just before; ``sent``, the rate the holder sent at (answered or not).
        Holders report only the 429s that are a signal (see
        :data:`~._process.STRAY_SHARE`).
        Returns the grants to push (all other holders) when the shared
        cool-down grew, else nothing (the others already know).
        """
        self._expire(now)
        if observed is not None and holder in self.holders:
            self.holders[holder].observed = observed
        # Adaptive mode guesses the rate only while the provider has not
        # announced it; once it has, its limit is the rate, and a stray 429
        # (another client of the same account) costs a cool-down, not speed.
        guessing = self.adaptive and self.learned_rpm is None
        if guessing and (self.rate is None or now - self.last_change >= max(1.0, seconds)):
            # One decrease per episode (at most one a second while 429s go
            # on): the 429s of many threads that overran together are one
            # signal, not many. The provider answered no more than its limit,
            # so the rate goes a little under what it answered.
            served = sum(rec.observed for rec in self.holders.values())
            # Where it broke: probing slows down as it nears this again.
            self.ceiling = self.rate if self.rate is not None else served or None
            if self.rate is None:
                # Unlimited until now: a little under what was served (which may
                # include the provider's burst; the step-down below corrects it).
                # A 429 before any answer (the first wave of a job) says only
                # that the rate sent was too much: half of it. A fixed floor
                # here would pin a fast endpoint's job to it for minutes after
                # one stray 429.
                if served > 0:
                    self.rate = ADAPTIVE_SETTLE * served
                elif sent:
                    self.rate = ADAPTIVE_DECREASE * sent
                else:
                    self.rate = ADAPTIVE_FALLBACK_RPM
            else:
                # 429s go on at the rate in force: down by a step, or to under
                # what is served if that is lower.
                step = self.rate * ADAPTIVE_STEP_DOWN
                self.rate = min(step, ADAPTIVE_SETTLE * served) if served > 0 else self.rate * ADAPTIVE_DECREASE
            self.rate = max(ADAPTIVE_MIN_RPM, self.rate)
            self.last_change = now
        self.last_429 = now
        if now + seconds <= self.cooldown_until + 0.01:
            return {}
        self.cooldown_until = now + seconds
        return {h: self._grant(h, now) for h in self.holders if h != holder}

    def _probe(self, now: float) -> None:
        if self.rate is None or self.learned_rpm is not None:
            return  # not limited yet, or the provider's limit is known
        if now - max(self.last_change, self.last_429) < ADAPTIVE_PROBE:
            return
        if self.ceiling is not None and self.rate >= self.ceiling:
            # Clean at the rate where the 429s came: they were not the limit
            # (a stray 429, or the provider's limit rose). Probe at full step.
            self.ceiling = None
        near = self.ceiling is not None and self.rate * ADAPTIVE_INCREASE > self.ceiling
        factor = ADAPTIVE_CREEP if near else ADAPTIVE_INCREASE
        self.rate = max(self.rate + 1.0, self.rate * factor)
        self.last_change = now

    # -- shares ------------------------------------------------------------

    def _expire(self, now: float) -> None:
        for h in [h for h, rec in self.holders.items() if rec.expires <= now]:
            del self.holders[h]

    def _shares(self, holder: str) -> tuple[float | None, float | None]:
        total = sum(rec.demand for rec in self.holders.values())
        part = self.holders[holder].demand / total
        rpm, tpm = self.rpm, self.tpm
        return (None if rpm is None else rpm * part, None if tpm is None else tpm * part)

    def _grant(self, holder: str, now: float) -> Grant:
        rec = self.holders[holder]
        rec.rpm, rec.tpm = self._shares(holder)
        self.seq += 1
        slots = rec.slots = None if self.max_concurrency is None else self._slot_parts()[holder]
        return Grant(
            seq=self.seq,
            slots=slots,
            rpm=rec.rpm,
            tpm=rec.tpm,
            ttl=max(0.0, rec.expires - GRACE - now),
            cooldown=max(0.0, self.cooldown_until - now),
        )

    def _slot_parts(self) -> dict[str, int]:
        """Fair parts of the concurrency slots: whole numbers that add up to
        ``max_concurrency`` (largest remainders), at least one each."""
        assert self.max_concurrency is not None
        total = sum(r.demand for r in self.holders.values())
        exact = {h: self.max_concurrency * r.demand / total for h, r in self.holders.items()}
        parts = {h: int(x) for h, x in exact.items()}
        spare = self.max_concurrency - sum(parts.values())
        for h in sorted(exact, key=lambda h: (parts[h] - exact[h], h))[:spare]:
            parts[h] += 1
        return {h: max(1, n) for h, n in parts.items()}

    def _revisions(self, now: float, exclude: str) -> dict[str, Grant]:
        out = {}
        slots = self._slot_parts() if self.max_concurrency is not None else {}
        for h, rec in self.holders.items():
            if h == exclude:
                continue
            new = self._shares(h)
            if any(_moved(a, b) for a, b in zip((rec.rpm, rec.tpm), new, strict=False)) or rec.slots != slots.get(h):
                out[h] = self._grant(h, now)
        return out


def _moved(old: float | None, new: float | None) -> bool:
    if old is None or new is None:
        return old is not new
    return abs(new - old) > PUSH_THRESHOLD * max(old, 1e-9)
