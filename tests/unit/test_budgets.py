"""Tenant budgets (worker/pipeline/budgets.py): the budgets from the configuration and the environment, and the
ledger of the day's spend (own events counted at once and once, days by the events' UTC time, rollover)."""

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from worker.config import DEFAULT_CONFIG, ConfigError, load_config
from worker.messages import CostEvent
from worker.pipeline.budgets import Budgets, Refusal, SpendLedger, utc_day

DAY = date(2027, 3, 14)
NOON = datetime(2027, 3, 14, 12, 0, tzinfo=UTC)


def event(job_id: str, cost: float, tenant: str | None = "t1", ts: datetime = NOON, attempt: int = 1) -> CostEvent:
    return CostEvent(
        job_id=job_id,
        attempt=attempt,
        provider="openai",
        model="gpt-4o",
        input_tokens=10,
        output_tokens=10,
        cost_usd=cost,
        outcome="ok",
        ts=ts,
        tenant=tenant,
        via="sync",
    )


def ledger(**env: str) -> SpendLedger:
    return SpendLedger(Budgets(load_config(env={f"LLM_ROUTER__{k}": v for k, v in env.items()})))


def test_budgets_come_from_named_tenants_and_the_default_for_the_others():
    budgets = Budgets(
        load_config(
            env={
                "LLM_ROUTER__TENANTS__T1__BUDGET_USD_PER_DAY": "0.01",
                "LLM_ROUTER__TENANTS__FREE__BUDGET_USD_PER_DAY": "0",
                "LLM_ROUTER__TENANT_DEFAULTS__BUDGET_USD_PER_DAY": "5",
            }
        )
    )
    assert budgets.of("t1") == 0.01
    assert budgets.of("free") == 0, "a tenant named with 0 has no budget, whatever the default"
    assert budgets.of("acme") == 5
    assert budgets.of("") == 5, "jobs without a tenant are the tenant '' and take the default"
    assert budgets.any


def test_without_budgets_nothing_is_budgeted():
    budgets = Budgets(load_config(env={}))
    assert not budgets.any
    assert budgets.of("acme") == 0


def test_a_negative_budget_fails_with_its_path():
    with pytest.raises(
        ConfigError, match=r"LLM_ROUTER__TENANTS__T1__BUDGET_USD_PER_DAY: tenants\.t1\.budget_usd_per_day"
    ):
        load_config(env={"LLM_ROUTER__TENANTS__T1__BUDGET_USD_PER_DAY": "-1"})


def test_a_tenant_of_the_file_keeps_its_name_under_an_environment_override(tmp_path):
    path = tmp_path / "router.toml"
    shipped = DEFAULT_CONFIG.read_text()
    path.write_text(shipped + '\n[tenants."Team-A"]\nbudget_usd_per_day = 1.0\n')
    config = load_config(path, env={"LLM_ROUTER__TENANTS__TEAM_A__BUDGET_USD_PER_DAY": "2.5"})
    assert Budgets(config).of("Team-A") == 2.5


def test_spend_reaching_the_budget_refuses_the_tenant_and_no_other():
    spend = ledger(TENANTS__T1__BUDGET_USD_PER_DAY="0.01", TENANTS__T2__BUDGET_USD_PER_DAY="1")
    for i in range(3):
        assert spend.add_read(event(f"j{i}", 0.003))
    assert spend.over_budget("t1", DAY) is None, "0.009 of 0.01"
    spend.add_read(event("j3", 0.001))
    refusal = spend.over_budget("t1", DAY)
    assert refusal == Refusal(tenant="t1", day=DAY, spent_usd=pytest.approx(0.01), budget_usd=0.01)
    assert "'t1'" in refusal.message and "$0.010000" in refusal.message and "2027-03-14" in refusal.message
    assert spend.over_budget("t2", DAY) is None
    assert spend.over_budget("unbudgeted", DAY) is None


def test_own_events_count_at_once_and_not_again_when_read_back():
    spend = ledger(TENANTS__T1__BUDGET_USD_PER_DAY="1")
    mine = [event("j1", 0.25), event("j1", 0.25, attempt=2)]
    spend.add_own(mine)
    assert spend.spent("t1", DAY) == 0.5
    assert spend.pending_own() == 2
    assert not spend.add_read(mine[0]) and not spend.add_read(mine[1])
    assert spend.spent("t1", DAY) == 0.5
    assert spend.pending_own() == 0
    # A redelivered job's second run is another event (another time), and counts.
    assert spend.add_read(event("j1", 0.25, ts=NOON + timedelta(seconds=3)))
    assert spend.spent("t1", DAY) == 0.75


def test_another_replicas_event_like_one_of_ours_counts_once_read():
    spend = ledger(TENANTS__T1__BUDGET_USD_PER_DAY="1")
    spend.add_own([event("j1", 0.25)])
    assert spend.add_read(event("j2", 0.25)), "not ours: counted"
    assert spend.spent("t1", DAY) == 0.5


def test_events_count_in_the_utc_day_of_their_time():
    spend = ledger(TENANTS__T1__BUDGET_USD_PER_DAY="1")
    late = datetime(2027, 3, 14, 23, 30, tzinfo=timezone(timedelta(hours=-2)))  # 01:30 UTC on the 15th
    spend.add_read(event("j1", 0.4, ts=late))
    spend.add_read(event("j2", 0.1))
    assert utc_day(late) == date(2027, 3, 15)
    assert spend.spent("t1", DAY) == 0.1
    assert spend.spent("t1", date(2027, 3, 15)) == 0.4


def test_midnight_starts_a_new_day_and_forgets_the_old_one():
    spend = ledger(TENANTS__T1__BUDGET_USD_PER_DAY="0.5")
    spend.add_own([event("j1", 0.6)])
    assert spend.over_budget("t1", DAY) is not None
    tomorrow = DAY + timedelta(days=1)
    assert spend.over_budget("t1", tomorrow) is None, "a new day, a new budget"
    spend.roll(tomorrow)
    assert spend.spent("t1", DAY) == 0.0
    assert spend.pending_own() == 0, "yesterday's events not read back are forgotten with it"
    assert not spend.add_read(event("j2", 0.3)), "an event of a forgotten day does not count"
    spend.add_read(event("j3", 0.3, ts=NOON + timedelta(days=1)))
    assert spend.spent("t1", tomorrow) == 0.3


def test_jobs_without_a_tenant_spend_as_the_tenant_without_a_name():
    spend = ledger(TENANT_DEFAULTS__BUDGET_USD_PER_DAY="0.2")
    spend.add_read(event("j1", 0.2, tenant=None))
    assert spend.over_budget("", DAY) == Refusal(tenant="", day=DAY, spent_usd=0.2, budget_usd=0.2)
    assert spend.budgeted(DAY) == [("", 0.2)]
