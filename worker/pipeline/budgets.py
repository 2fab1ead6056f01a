"""Tenant budgets: each tenant's spend in a UTC day, summed from the cost events, against its budget. Pure: no
Kafka here (spend.py tails the costs topic into a `SpendLedger`).

A replica counts its own cost events when it hands them to its sink (`add_own`), at once, and every cost event
of every replica when it reads it back from the costs topic (`add_read`); an event of its own read back is
recognised by its identity (job id, attempt number, time) and not counted twice. An event counts in the UTC
day of its `ts`. Jobs without a tenant count as the tenant "".
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import NamedTuple

from worker.config import Config
from worker.messages import CostEvent

BUDGET_EXCEEDED = "budget_exceeded"  # the error kind of a job refused for its tenant's budget
# A day's cost events are read from this long before its midnight to this long after the next: a record's
# timestamp is its send, a little after the event's `ts` (the event's `ts` decides its day).
DAY_SLACK_S = 300


def utc_day(moment: datetime) -> date:
    """The UTC day of `moment` (a naive time is taken as UTC)."""
    return moment.astimezone(UTC).date() if moment.tzinfo is not None else moment.date()


def today() -> date:
    """The current UTC day."""
    return datetime.now(UTC).date()


class Budgets:
    """Each tenant's budget in USD a UTC day, from `[tenants.NAME]` and `[tenant_defaults]`; 0: none."""

    def __init__(self, config: Config) -> None:
        self._named = {name: tenant.budget_usd_per_day for name, tenant in config.tenants.items()}
        self._default = config.tenant_defaults.budget_usd_per_day

    def of(self, tenant: str) -> float:
        """The budget of `tenant` ("" for jobs without one): its own when it is named, else the default."""
        budget = self._named.get(tenant)
        return self._default if budget is None else budget

    @property
    def any(self) -> bool:
        """Whether some tenant has a budget (else nothing needs the spend)."""
        return self._default > 0 or any(budget > 0 for budget in self._named.values())


class Refusal(NamedTuple):
    """Why a tenant's job is refused: its spend of the day has reached its budget."""

    tenant: str
    day: date
    spent_usd: float
    budget_usd: float

    @property
    def message(self) -> str:
        """The result's error message: the tenant, its spend and its budget."""
        return (
            f"tenant {self.tenant!r} has spent ${self.spent_usd:.6f} of its budget of ${self.budget_usd:.6f} "
            f"for {self.day.isoformat()} (UTC)"
        )


_Identity = tuple[str, int, datetime]


def _identity(event: CostEvent) -> _Identity:
    return event.job_id, event.attempt, event.ts


class SpendLedger:
    """Spend by tenant and UTC day; days before the latest `roll` are forgotten."""

    def __init__(self, budgets: Budgets) -> None:
        self.budgets = budgets
        self._spent: dict[date, dict[str, float]] = {}
        # This replica's events counted at once and not read back yet, by day: skipped when they are.
        self._own: dict[date, set[_Identity]] = {}
        self._since: date | None = None  # the first day kept (None: every day)

    def add_own(self, events: Iterable[CostEvent]) -> None:
        """Count this replica's cost events as they go to the costs topic (once, however often they are read back)."""
        for event in events:
            day = utc_day(event.ts)
            if self._kept(day):
                self._own.setdefault(day, set()).add(_identity(event))
                self._add(day, event)

    def add_read(self, event: CostEvent) -> bool:
        """Count a cost event read from the costs topic, unless it is one of this replica's counted already;
        whether it counted."""
        day = utc_day(event.ts)
        if not self._kept(day):
            return False
        own = self._own.get(day)
        if own:
            identity = _identity(event)
            if identity in own:
                own.remove(identity)
                return False
        self._add(day, event)
        return True

    def _kept(self, day: date) -> bool:
        return self._since is None or day >= self._since

    def _add(self, day: date, event: CostEvent) -> None:
        by_tenant = self._spent.setdefault(day, {})
        tenant = event.tenant or ""
        by_tenant[tenant] = by_tenant.get(tenant, 0.0) + event.cost_usd

    def spent(self, tenant: str, day: date) -> float:
        """What `tenant` spent on `day`, as far as this ledger knows."""
        return self._spent.get(day, {}).get(tenant, 0.0)

    def over_budget(self, tenant: str, day: date) -> Refusal | None:
        """The refusal of a job of `tenant` on `day` when its spend has reached its budget, else None."""
        budget = self.budgets.of(tenant)
        if budget <= 0:
            return None
        spent = self.spent(tenant, day)
        return Refusal(tenant=tenant, day=day, spent_usd=spent, budget_usd=budget) if spent >= budget else None

    def budgeted(self, day: date) -> list[tuple[str, float]]:
        """The spend on `day` of each tenant with a budget that spent something."""
        spent = self._spent.get(day, {})
        return [(tenant, usd) for tenant, usd in spent.items() if self.budgets.of(tenant) > 0]

    def roll(self, day: date) -> None:
        """Forget the days before `day` (midnight passed): their spend and their events not read back."""
        self._since = day
        for kept in (self._spent, self._own):
            for old in [d for d in kept if d < day]:
                del kept[old]

    def pending_own(self) -> int:
        """This replica's events counted and not read back yet."""
        return sum(len(identities) for identities in self._own.values())
