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

Concurrency slots (``max_concurrency``) are granted the same way, as a
whole number of slots per holder, so that a runner thread takes and gives
back a slot with no message. Slots cannot be taken back from a thread that
holds one, so a lowered grant frees nothing until the holder acknowledges
it (a renewal reporting the grant it applied and its slots in use): until
then the allocator counts the holder at the most it may be using. The
invariant is that these bounds add up to at most ``max_concurrency``.

Pure logic on a caller-supplied clock, so it is tested without a cluster.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["LEASE_TTL", "PUSH_GRANT", "Allocator", "Grant"]

#: The push (coordinator to holder) of a revised grant.
PUSH_GRANT = "dask-llm-budget-grant"

#: Seconds a grant is valid; holders renew at half of it (or sooner when
#: their demand changes). Revisions in between are pushed, so this only
#: bounds how long a wedged holder keeps its share.
LEASE_TTL = 30.0
#: Shorter validity in adaptive mode once there is a rate to probe (after
#: the first 429, until the provider announces its limit): holders report
#: saturation at each renewal, which is what lets the rate probe upward.
ADAPTIVE_TTL = 4.0
#: The scheduler keeps a share reserved this much longer than the holder
#: uses it, to cover the message's travel time.
GRACE = 1.0
#: A revised share is pushed to a holder when it moves by more than this.
PUSH_THRESHOLD = 0.05
#: Seconds the slots of a holder that died stay counted: its calls may still
#: be running at a provider that does not notice the closed connections.
DEPARTED_HOLD = 5.0
#: Seconds the others' larger parts wait after a holder releases (see
#: :meth:`Allocator.tick`): at a job's end the holders release one after
#: another, and a rise pushed to a holder about to release is a message for
#: nothing; releases within this time cost one push per holder still there.
RISE_DELAY = 1.0

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
    seconds during which no request may start; ``slots``: concurrency slots
    the holder may have in use (``None``: no cap); ``contended``: some holder
    wants more slots than it has, so slots this one does not use are worth
    handing back; ``seq`` orders grants that travel by different routes
    (reply and push).
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
    observed: float | None = None  # answered per minute at its last report (None: no history yet)
    rpm: float | None = None
    tpm: float | None = None
    slots: int = 0  # concurrency slots assigned
    told: int = 0  # slots in the latest grant issued to it
    in_use: int = 0  # slots in use at its last report
    # (seq, slots) of grants it may not have applied yet, the latest last
    issued: list[tuple[int, int]] = field(default_factory=list)

    @property
    def bound(self) -> int:
        """The most slots the holder may be using: what it had at its last
        report, or any grant since that it may have applied."""
        return max([self.in_use, self.slots, *(n for _, n in self.issued)])


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
        self.departed: dict[str, tuple[float, int]] = {}  # holder that died -> (until, slots held)
        # Grants are ordered by seq; starting from the clock keeps a
        # re-created allocator's grants newer than its predecessor's.
        self.seq = time.time_ns() // 1000
        self.rises_due: float | None = None  # when the parts a release freed are pushed

    # -- the limits in force -------------------------------------------------

    @property
    def ttl(self) -> float:
        """Validity of a grant: short only while an adaptive rate is probed."""
        probing = self.adaptive and self.rate is not None and self.learned_rpm is None
        return ADAPTIVE_TTL if probing else LEASE_TTL

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
        observed: float | None = None,
        in_use: int = 0,
        applied: int = -1,
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
        observed : float, optional
            Requests per minute the provider answered for the holder since
            its last renewal (429s and failures excluded); ``None``: no
            renewal yet to count from.
        in_use, applied : int
            Concurrency slots the holder has in use, and the ``seq`` of the
            latest grant it had applied when it counted them.

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
        rec = self.holders.get(holder)
        if rec is None:
            rec = self.holders[holder] = _Holder(1.0, 0.0)
        rec.demand, rec.expires, rec.observed = max(float(demand), 1.0), now + self.ttl + GRACE, observed
        # Grants before the one it applied are superseded: they bound nothing.
        rec.in_use, rec.issued = in_use, [(seq, n) for seq, n in rec.issued if seq >= applied]
        moved = self._assign_slots()
        return self._grant(holder, now), self._revisions(now, exclude=holder, moved=moved, rises=False)

    def remove(self, holder: str, now: float) -> dict[str, Grant]:
        """``holder`` died: its rate goes to the others at once, its slots
        after :data:`DEPARTED_HOLD` (then :meth:`tick` gives them out)."""
        rec = self.holders.get(holder)
        if rec is not None and self.max_concurrency is not None and rec.bound > 0:
            self.departed[holder] = (now + DEPARTED_HOLD, rec.bound)
        self._expire(now)
        if self.holders.pop(holder, None) is None:
            return {}
        return self._revisions(now, exclude=holder, moved=self._assign_slots())

    def tick(self, now: float) -> dict[str, Grant]:
        """Grants due by the clock: the slots of departed holders whose hold
        has ended, and the larger parts of the holders that stayed when
        others released, :data:`RISE_DELAY` after the first release."""
        held = any(until <= now for until, _ in self.departed.values())
        rises = self.rises_due is not None and self.rises_due <= now
        if not (held or rises):
            return {}
        self._expire(now)
        moved = self._assign_slots()
        if rises:
            self.rises_due = None
            moved |= {h for h, rec in self.holders.items() if rec.slots != rec.told}
        return self._revisions(now, exclude="", moved=moved)

    def release(self, holder: str, now: float) -> dict[str, Grant]:
        """``holder`` has gone idle or away: its part goes to the rest.

        Its slots and rate are the others' at once as far as the bounds go,
        but are pushed to them only by :meth:`tick` (call it after
        :data:`RISE_DELAY`), unless a part fell."""
        self._expire(now)
        if self.holders.pop(holder, None) is None:
            return {}
        moved = self._assign_slots()
        if self.holders and self.rises_due is None:
            self.rises_due = now + RISE_DELAY
        lowered = {h for h in moved if self.holders[h].slots < self.holders[h].told}
        return self._revisions(now, exclude=holder, moved=lowered, rises=False)

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
        cool-down grew or the adaptive rate fell, else nothing (the others
        already know).
        """
        self._expire(now)
        if observed is not None and holder in self.holders:
            self.holders[holder].observed = observed
        # Adaptive mode guesses the rate only while the provider has not
        # announced it; once it has, its limit is the rate, and a stray 429
        # (another client of the same account) costs a cool-down, not speed.
        guessing = self.adaptive and self.learned_rpm is None
        lowered = guessing and (self.rate is None or now - self.last_change >= max(1.0, seconds))
        if lowered:
            # One decrease per episode (at most one a second while 429s go
            # on): the 429s of many threads that overran together are one
            # signal, not many. The provider answered no more than its limit,
            # so the rate goes a little under what it answered.
            served = self._served(holder)
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
            # A rate to probe from now on: renewals come every ADAPTIVE_TTL / 2.
            for rec in self.holders.values():
                rec.expires = min(rec.expires, now + self.ttl + GRACE)
        self.last_429 = now
        longer = now + seconds > self.cooldown_until + 0.01
        if longer:
            self.cooldown_until = now + seconds
        if not (longer or lowered):
            return {}  # the others already know
        return {h: self._grant(h, now) for h in self.holders if h != holder}

    def _served(self, holder: str | None) -> float:
        """Requests per minute the provider answered the holders lately. A
        holder with no report yet (the first 429 often comes before any
        renewal) is counted at the reporting holder's rate per unit of
        weight: with no limit in force, each sends in proportion to it."""
        known = {h: rec.observed for h, rec in self.holders.items() if rec.observed is not None}
        served = sum(known.values())
        ref = self.holders.get(holder) if holder is not None else None
        if ref is not None and ref.observed and (weight := self._weight(ref)) > 0:
            served += sum(
                ref.observed * self._weight(rec) / weight for h, rec in self.holders.items() if h not in known
            )
        return served

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
        self.departed = {h: d for h, d in self.departed.items() if d[0] > now}

    def _weight(self, rec: _Holder) -> float:
        # With a cap on slots, a holder can use the rate only for the threads
        # it may have at work (a newcomer waiting for slots, none yet);
        # rounded up to a power of two, so that slots moving by one or two
        # move no rate.
        if self.max_concurrency is None or rec.bound == 0:
            return rec.demand if self.max_concurrency is None else 0.0
        return min(rec.demand, float(1 << (rec.bound - 1).bit_length()))

    def _shares(self, holder: str) -> tuple[float | None, float | None]:
        weights = {h: self._weight(rec) for h, rec in self.holders.items()}
        total = sum(weights.values())
        part = weights[holder] / total if total > 0 else 1.0 / len(weights)
        rpm, tpm = self.rpm, self.tpm
        return (None if rpm is None else rpm * part, None if tpm is None else tpm * part)

    def _grant(self, holder: str, now: float) -> Grant:
        rec = self.holders[holder]
        rec.rpm, rec.tpm = self._shares(holder)
        self.seq += 1
        slots = None
        if self.max_concurrency is not None:
            slots = rec.told = rec.slots
            rec.issued.append((self.seq, slots))
        return Grant(
            seq=self.seq,
            slots=slots,
            contended=slots is not None and self.contended,
            rpm=rec.rpm,
            tpm=rec.tpm,
            ttl=max(0.0, rec.expires - GRACE - now),
            cooldown=max(0.0, self.cooldown_until - now),
        )

    # -- concurrency slots ------------------------------------------------------

    @property
    def contended(self) -> bool:
        """Whether some holder wants more slots than it has."""
        return any(rec.slots < min(rec.demand, self.max_concurrency or 0) for rec in self.holders.values())

    def _slot_targets(self) -> dict[str, int]:
        """Each holder's fair part of the slots, water-filled by demand: a
        holder that wants less than an equal part gets what it wants, the
        rest share the remainder. Slots nobody wants stay free, so that a
        newcomer gets its part at once, with no slots to take back first
        (holders announce the threads of a new pool, see ``Limiter.lease``)."""
        assert self.max_concurrency is not None
        left = self.max_concurrency
        targets: dict[str, int] = {}
        ordered = sorted(self.holders.items(), key=lambda kv: (kv[1].demand, kv[0]))
        for i, (h, rec) in enumerate(ordered):
            targets[h] = min(int(rec.demand), -(-left // (len(ordered) - i)))
            left -= targets[h]
        return targets

    def _assign_slots(self) -> set[str]:
        """Move every holder's slots toward its fair part without the bounds
        ever adding up to more than ``max_concurrency``; the holders to
        tell."""
        if self.max_concurrency is None or not self.holders:
            return set()
        targets = self._slot_targets()
        moved = set()
        # Decreases first: they free nothing until acknowledged, but they
        # must be issued for the acknowledgements to come.
        for h in sorted(self.holders, key=lambda h: (targets[h] - self.holders[h].slots, h)):
            rec = self.holders[h]
            others = sum(r.bound for o, r in self.holders.items() if o != h)
            others += sum(n for _, n in self.departed.values())
            new = max(0, min(targets[h], self.max_concurrency - others))
            if new != rec.slots:
                moved.add(h)
                rec.slots = new
        return moved

    def slot_stats(self) -> dict[str, dict[str, int]]:
        """Per holder: slots granted, in use at its last report, and the bound."""
        return {h: {"slots": r.slots, "in_use": r.in_use, "bound": r.bound} for h, r in self.holders.items()}

    def _revisions(
        self, now: float, exclude: str, moved: set[str] | None = None, rises: bool = True
    ) -> dict[str, Grant]:
        """Grants to push: holders whose slots moved, or whose share fell
        (the invariant needs it now), or rose when ``rises`` (someone left:
        the others may use its part at once; otherwise a rise waits for the
        holder's next renewal)."""
        out = {}
        moved = moved or set()
        for h, rec in self.holders.items():
            if h == exclude:
                continue
            new = self._shares(h)
            pairs = list(zip((rec.rpm, rec.tpm), new, strict=False))
            if h in moved or any(_moved(a, b) and (rises or a is None or (b is not None and b < a)) for a, b in pairs):
                out[h] = self._grant(h, now)
        return out


def _moved(old: float | None, new: float | None) -> bool:
    if old is None or new is None:
        return old is not new
    return abs(new - old) > PUSH_THRESHOLD * max(old, 1e-9)
