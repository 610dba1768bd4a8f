"""The closed loop on the golden run: the second snapshot's run measures the first snapshot's plan (its horizon,
90 days, has passed), plans with the uplift learned from it, and publishes the tiers' economics."""

from __future__ import annotations

import duckdb
import pandas as pd
import pytest
from deltalake import DeltaTable
from frames import D1, D2, GOLDEN_INPUT

from segscale import catalog
from segscale.transforms.outcomes import difference_interval


def rows(warehouse, table: catalog.Table):
    return DeltaTable(warehouse.uri(table)).to_pandas()


def test_the_second_run_measures_the_first_plan_as_an_independent_computation_does(two_snapshots):
    settings, warehouse, first, second = two_snapshots
    outcomes = rows(warehouse, catalog.RETENTION_OUTCOMES).set_index("value_tier")
    assert set(outcomes["snapshot_date"].astype(str)) == {D1.isoformat()}  # D2's plan is still within its horizon
    assert (outcomes["measured_on"].astype(str) == D2.isoformat()).all()
    assert (outcomes["plan_run_id"] == first["run_id"]).all() and (outcomes["run_id"] == second["run_id"]).all()
    assert second["stages"]["outcomes"]["waiting"] == []
    assert list(second["stages"]["outcomes"]["measured"]) == [D1.isoformat()]
    # The same groups and window, computed by DuckDB straight from the published plan and the input's files.
    con = duckdb.connect()
    con.register("plan", DeltaTable(warehouse.uri(catalog.RETENTION_PLAN)).to_pyarrow_table())
    con.sql(f"""CREATE VIEW tx AS SELECT transaction_id, customer_id, try_cast(ts AS TIMESTAMPTZ) AS ts,
                    try_cast(amount AS DOUBLE) AS amount, transaction_type
                FROM read_csv('{GOLDEN_INPUT}/transactions/*.csv', all_varchar = true)""")
    # The input has 1 % bad rows: keep the valid ones, and of a repeated transaction_id the earliest.
    expected = con.sql(f"""
        WITH clean AS (
            SELECT * FROM tx
            WHERE trim(transaction_id) <> '' AND trim(customer_id) <> '' AND ts IS NOT NULL
              AND amount >= 0 AND NOT isnan(amount) AND transaction_type IN ('purchase', 'return')
            QUALIFY row_number() OVER (PARTITION BY transaction_id ORDER BY ts) = 1),
        w AS (
            SELECT customer_id, count(*) FILTER (WHERE transaction_type = 'purchase') AS purchases,
                   sum(CASE transaction_type WHEN 'purchase' THEN amount ELSE -amount END) AS revenue
            FROM clean
            WHERE ts >= TIMESTAMPTZ '{D1} 00:00:00+00' + INTERVAL 1 DAY
              AND ts < TIMESTAMPTZ '{D1} 00:00:00+00' + INTERVAL 91 DAY
            GROUP BY customer_id)
        SELECT value_tier, treatment_group, count(*) AS n, count(*) FILTER (WHERE purchases > 0) AS retained,
               avg(coalesce(revenue, 0)) AS revenue, sum(cost) AS cost
        FROM plan LEFT JOIN w USING (customer_id)
        WHERE snapshot_date = DATE '{D1}' AND treatment_group IN ('treated', 'control')
        GROUP BY ALL""").df().set_index(["value_tier", "treatment_group"])
    for tier, row in outcomes.iterrows():
        treated, control = expected.loc[(tier, "treated")], expected.loc[(tier, "control")]
        assert (row["customers_treated"], row["customers_controlled"]) == (treated["n"], control["n"])
        assert row["retention_treated"] == pytest.approx(treated["retained"] / treated["n"])
        assert row["retention_control"] == pytest.approx(control["retained"] / control["n"])
        low, high = difference_interval((treated["retained"], treated["n"]), (control["retained"], control["n"]),
                                        settings.retention.confidence)
        assert (row["incremental_retention_low"], row["incremental_retention_high"]) == (
            pytest.approx(low), pytest.approx(high))
        assert row["revenue_per_treated"] == pytest.approx(treated["revenue"], rel=1e-9)
        assert row["revenue_per_control"] == pytest.approx(control["revenue"], rel=1e-9)
        # No treatments table in the golden input: the treated group counts as treated, at the plan's cost.
        assert row["spend"] == pytest.approx(treated["cost"]) and pd.isna(row["treated_with_records"])
        assert row["uplift_planned"] == getattr(settings.retention.treatments, tier).uplift


def test_the_next_plan_uses_the_uplift_learned_from_the_measured_one(two_snapshots):
    settings, warehouse, _, second = two_snapshots
    summary = rows(warehouse, catalog.RETENTION_SUMMARY).astype({"snapshot_date": str})
    outcomes = rows(warehouse, catalog.RETENTION_OUTCOMES).set_index("value_tier")
    for tier, row in summary.set_index(["snapshot_date", "value_tier"]).loc[D2.isoformat()].iterrows():
        assert row["uplift_source"] == "learned" and list(row["uplift_plans"]) == [D1.isoformat()]
        assert row["uplift"] == pytest.approx(min(max(outcomes.loc[tier, "learned_uplift"], 0.0), 1.0))
        assert second["stages"]["plan"]["retention"]["uplifts"][tier]["source"] == "learned"
    first = summary.set_index(["snapshot_date", "value_tier"]).loc[D1.isoformat()]
    assert (first["uplift_source"] == "configured").all()
    assert first.loc["high_value", "uplift"] == settings.retention.treatments.high_value.uplift


def test_tier_economics_add_up_to_the_published_scores_and_plans(two_snapshots):
    _, warehouse, _, second = two_snapshots
    economics = rows(warehouse, catalog.TIER_ECONOMICS)
    assert sorted(economics["snapshot_date"].astype(str).unique()) == [D1.isoformat(), D2.isoformat()]
    con = duckdb.connect()
    for table in (catalog.CUSTOMER_SCORES, catalog.CUSTOMER_FEATURES, catalog.RETENTION_SUMMARY):
        con.register(table.name, DeltaTable(warehouse.uri(table)).to_pyarrow_table())
    expected = con.sql(f"""
        SELECT s.value_tier, count(*) AS customers, sum(f.spend_365d) AS revenue, sum(s.clv) AS clv,
               sum(f.interaction_cost_365d) AS interactions,
               (SELECT sum(spend) FROM retention_summary r WHERE r.value_tier = s.value_tier) AS spend
        FROM customer_scores s JOIN customer_features f USING (customer_id, snapshot_date)
        WHERE s.snapshot_date = DATE '{D2}' GROUP BY ALL""").df().set_index("value_tier")
    at_d2 = economics[economics["snapshot_date"].astype(str) == D2.isoformat()].set_index("value_tier")
    at_d1 = economics[economics["snapshot_date"].astype(str) == D1.isoformat()].set_index("value_tier")
    for tier, row in at_d2.iterrows():
        assert row["customers"] == expected.loc[tier, "customers"]
        assert row["revenue_365d"] == pytest.approx(expected.loc[tier, "revenue"])
        # Both plans fall in the year up to D2.
        assert row["treatment_spend_365d"] == pytest.approx(expected.loc[tier, "spend"])
        assert row["cost_to_serve"] == pytest.approx(expected.loc[tier, "interactions"] + expected.loc[tier, "spend"])
        assert row["value_share"] == pytest.approx(expected.loc[tier, "clv"] / expected["clv"].sum())
        assert row["margin_change"] == pytest.approx(row["margin"] - at_d1.loc[tier, "margin"])
        assert str(row["previous_snapshot"]) == D1.isoformat()
    assert (at_d1["previous_snapshot"].isna()).all()
    warned = [w for w in at_d2["warning"] if isinstance(w, str)]
    assert all(w in second["warnings"] for w in warned)
