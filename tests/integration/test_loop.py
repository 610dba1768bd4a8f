"""The closed retention loop on generated data whose true treatment effects are known (`segscale treat`): over
three quarterly snapshots, each plan is carried out, measured after its horizon (by the next snapshot's run), and
the next plan uses what was learned. The measured intervals cover the true effects, the learned uplift moves from
the configured prior toward the truth, and the plans are worth more than plans made with the prior."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable
from frames import CHEAP_MODELS, GOLDEN_INPUT, settings_for
from scipy import stats

from segscale import catalog
from segscale.cli.app import main
from segscale.io.delta import CommitMetadata, Warehouse
from segscale.pipeline import generate_inputs
from segscale.transforms.plan import candidates, ranked

SNAPSHOTS = (dt.date(2024, 3, 31), dt.date(2024, 6, 30), dt.date(2024, 9, 30))
# Configured uplifts (the prior) against the generator's truth: one-to-one service is overrated, email/SMS
# underrated.
PRIOR = {"high_value": 0.30, "potential": 0.10, "regular": 0.03}
TRUTH = {"high_value": 0.05, "potential": 0.40, "regular": 0.03}
MODELLED = dt.date(2024, 12, 31)


@pytest.fixture(scope="module")
def loop(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    settings = settings_for(
        root / "in", root / "wh",
        generate={"customers": 3000, "seed": 11, "end": "2024-12-31", "treatment_effects": TRUTH},
        # Half the plan held out, so two plans of 3,000 customers measure the effects well; intervals at 99.9 %
        # so that all six of them cover the truth unless they are wrong (their 95 % coverage is a unit test's).
        retention={"budget": 2500.0, "holdout_share": 0.5, "confidence": 0.999, "uplift_prior_strength": 50.0},
        **CHEAP_MODELS,
    )
    generate_inputs(spark, settings, str(root / "in"))
    config = root / "loop.yaml"
    config.write_text(settings.model_dump_json(include={"paths", "delta", "generate", "retention", "churn"}))
    for day in SNAPSHOTS:
        assert main(["run", "--config", str(config), "--snapshot-date", day.isoformat()], spark=spark) == 0
        assert main(["treat", "--config", str(config), "--snapshot-date", day.isoformat()], spark=spark) == 0
    return settings, root


def table(root, *parts: str) -> pd.DataFrame:
    return DeltaTable(str(root.joinpath(*parts))).to_pandas()


def outcomes_of_the_loop(root) -> pd.DataFrame:
    """retention_outcomes as the loop's runs left it (`modelled` measures one more plan, later)."""
    outcomes = table(root, "wh", "retention_outcomes")
    return outcomes[outcomes["measured_on"].astype(str) <= SNAPSHOTS[-1].isoformat()]


def test_every_measured_interval_covers_the_true_effect_on_the_treated(loop):
    _, root = loop
    outcomes = outcomes_of_the_loop(root)
    assert sorted(outcomes["snapshot_date"].astype(str).unique()) == [d.isoformat() for d in SNAPSHOTS[:2]]
    truth = table(root, "in", "treatment_truth")
    truth = truth[truth["treatment_group"] == "treated"]
    true_effect = (truth["retained_if_treated"].astype(int) - truth["retained_untreated"].astype(int)).groupby(
        [truth["snapshot_date"].astype(str), truth["value_tier"]]).mean()
    for _, row in outcomes.iterrows():
        effect = true_effect[(str(row["snapshot_date"]), row["value_tier"])]
        assert row["incremental_retention_low"] <= effect <= row["incremental_retention_high"], row.to_dict()
    # The recorded treatments (the treated group, as `treat` wrote them) reached every treated customer.
    assert (outcomes["treated_with_records"] == outcomes["customers_treated"]).all()
    assert (outcomes["controls_with_records"] == 0).all()


def test_the_learned_uplift_moves_from_the_prior_toward_the_truth(loop):
    _, root = loop
    outcomes = outcomes_of_the_loop(root).sort_values("snapshot_date")
    for tier in ("high_value", "potential"):
        learned = outcomes.loc[outcomes["value_tier"] == tier, "learned_uplift"].to_numpy()
        error = np.abs(learned - TRUTH[tier])
        assert error[-1] < abs(PRIOR[tier] - TRUTH[tier]) / 2, (tier, learned)
        assert error[-1] <= error[0] + 0.02, (tier, learned)  # more plans, no further from the truth
    summary = table(root, "wh", "retention_summary")
    last = summary[summary["snapshot_date"].astype(str) == SNAPSHOTS[-1].isoformat()].set_index("value_tier")
    assert (last["uplift_source"] == "learned").all()
    # Email/SMS was measured in both plans; one-to-one service, once learned to be worth little, may have dropped
    # out of the second plan (then its learning rests on the first).
    assert list(last.loc["potential", "uplift_plans"]) == [d.isoformat() for d in SNAPSHOTS[:2]]
    assert SNAPSHOTS[0].isoformat() in list(last.loc["high_value", "uplift_plans"])


def test_plans_made_with_the_learned_uplift_are_worth_more_than_with_the_prior(loop, spark):
    settings, root = loop
    warehouse = Warehouse(spark, str(root / "wh"), settings.delta)
    # Realized: what the treatment truly added (both potential outcomes are known) per unit spent, first plan
    # (configured uplifts) against the last carried out (learned from two measured plans).
    truth = table(root, "in", "treatment_truth")
    plan = table(root, "wh", "retention_plan")
    treated = truth[truth["treatment_group"] == "treated"].merge(
        plan[["customer_id", "snapshot_date", "clv", "cost"]], on=["customer_id", "snapshot_date"])
    treated["added"] = (treated["retained_if_treated"].astype(int) - treated["retained_untreated"].astype(int)
                        ) * treated["clv"]
    per_plan = treated.groupby(treated["snapshot_date"].astype(str)).agg(added=("added", "sum"), spend=("cost", "sum"))
    realized = (per_plan["added"] - per_plan["spend"]) / per_plan["spend"]
    assert realized[SNAPSHOTS[-1].isoformat()] > realized[SNAPSHOTS[0].isoformat()]
    # Counterfactual on the same scores: the last snapshot planned with the prior instead, both valued under the
    # true effects.
    last = SNAPSHOTS[-1].isoformat()
    scores = warehouse.read(catalog.CUSTOMER_SCORES).where(f"snapshot_date = DATE'{last}'")

    def true_value(uplifts: dict[str, float]) -> float:
        with ranked(candidates(scores, settings.retention, uplifts), settings.retention) as ranked_df:
            chosen = ranked_df.where("selected").select("value_tier", "churn_probability", "clv", "cost").toPandas()
        effect = chosen["value_tier"].map(TRUTH)
        return float((effect * chosen["churn_probability"] * chosen["clv"] - chosen["cost"]).sum())

    learned = table(root, "wh", "retention_summary")
    learned = learned[learned["snapshot_date"].astype(str) == last].set_index("value_tier")["uplift"]
    assert true_value(learned.to_dict()) > true_value(PRIOR)


def test_treat_refuses_real_data_and_a_plan_it_already_carried_out(loop, spark, capsys, tmp_path):
    settings, root = loop
    warehouse, day = str(root / "wh"), SNAPSHOTS[0].isoformat()
    transactions = table(root, "in", "transactions")
    assert main(["treat", "--input", str(root / "in"), "--warehouse", warehouse, "--snapshot-date", day],
                spark=spark) == 2
    assert f"the plan of {day} was already carried out" in capsys.readouterr().err
    assert len(table(root, "in", "transactions")) == len(transactions)  # nothing added
    assert main(["treat", "--input", str(GOLDEN_INPUT), "--warehouse", warehouse, "--snapshot-date", day],
                spark=spark) == 2
    assert "never on real data" in capsys.readouterr().err


@pytest.fixture(scope="module")
def modelled(loop, spark):
    """One more quarter with `retention.uplift_model`: the run of 2024-12-31 measures the plan of 2024-09-30 and
    fits the per-customer uplift model on the three measured plans. Returns the config file of that run."""
    settings, root = loop
    config = root / "modelled.yaml"
    config.write_text(settings.model_copy(update={"retention": settings.retention.model_copy(
        update={"uplift_model": True})}).model_dump_json(include={"paths", "delta", "generate", "retention", "churn"}))
    assert main(["run", "--config", str(config), "--snapshot-date", MODELLED.isoformat()], spark=spark) == 0
    return settings, root, config


def latest(root, name: str, day: dt.date) -> pd.DataFrame:
    frame = table(root, "wh", name)
    return frame[frame["snapshot_date"].astype(str) == day.isoformat()]


def test_the_uplift_model_is_fitted_on_every_measured_plan_and_judged_against_random_targeting(modelled):
    settings, root, _ = modelled
    models = table(root, "wh", "uplift_models")
    assert list(models.columns) == catalog.UPLIFT_MODELS.column_names
    assert len(models) == 1
    model = models.iloc[0]
    assert str(model["snapshot_date"]) == MODELLED.isoformat()
    assert list(model["plans"]) == [d.isoformat() for d in SNAPSHOTS]
    plan = table(root, "wh", "retention_plan")
    randomized = plan[plan["treatment_group"].isin(["treated", "control"])
                      & plan["snapshot_date"].astype(str).isin(list(model["plans"]))]
    assert model["customers_fitted"] + model["customers_evaluated"] == len(randomized)
    assert 0.2 < model["customers_evaluated"] / len(randomized) < 0.4
    assert model["qini_depths"][0] == 0 and model["qini_depths"][-1] == pytest.approx(1.0)
    assert model["qini_random_sd"] > 0
    # Used exactly when the coefficient beats random targeting at retention.confidence (0.999 here: 3.09 sd).
    beats = model["qini_coefficient"] > stats.norm.ppf(settings.retention.confidence) * model["qini_random_sd"]
    assert bool(model["used_by_plans"]) == beats and (model["note"] is None) == beats
    summary = latest(root, "retention_summary", MODELLED)
    assert (summary["uplift_source"] == ("model" if beats else "learned")).all()
    report = root / "report.html"
    assert main(["report", "--warehouse", str(root / "wh"), "--out", str(report)]) == 0
    html = report.read_text()
    assert "Per-customer uplift model" in html and 'data-chart="uplift-qini"' in html


def test_a_plan_with_a_model_that_beats_random_values_each_customer_with_it(modelled, spark):
    settings, root, config = modelled
    # The model as if its Qini coefficient had beaten random targeting; `segscale plan` re-plans the snapshot.
    model = table(root, "wh", "uplift_models").iloc[0].to_dict()
    warehouse = Warehouse(spark, str(root / "wh"), settings.delta)
    row = {**model, "used_by_plans": True, "note": None, "plans": list(model["plans"]), "terms": list(model["terms"])}
    row.update({k: [float(v) for v in model[k]] for k in ("treated_coefficients", "control_coefficients",
                                                           "qini_depths", "qini_gains")})
    warehouse.write(catalog.UPLIFT_MODELS, spark.createDataFrame([row], catalog.UPLIFT_MODELS.spark_schema),
                    meta=CommitMetadata(run_id="test", stage="outcomes", config_hash="x"),
                    partition={"snapshot_date": MODELLED})
    assert main(["plan", "--config", str(config), "--snapshot-date", MODELLED.isoformat()], spark=spark) == 0
    summary = latest(root, "retention_summary", MODELLED)
    assert (summary["uplift_source"] == "model").all() and summary["uplift"].isna().all()
    assert all(list(p) == list(model["plans"]) for p in summary["uplift_plans"])
    # Each candidate valued with the published coefficients: τ(x) × clv − cost, computed here in numpy.
    candidates_df = latest(root, "retention_plan", MODELLED)
    assert len(candidates_df) > 0
    x = {"churn_probability": candidates_df["churn_probability"], "log_clv": np.log1p(candidates_df["clv"])}
    for name in model["terms"][2:]:
        column, value = name.split("_", 1)
        x[name] = (candidates_df["value_tier" if column == "tier" else "lifecycle_stage"] == value).astype(float)

    def probability(arm: str) -> np.ndarray:
        linear = model[f"{arm}_intercept"] + sum(c * x[t] for t, c in zip(model["terms"], model[f"{arm}_coefficients"],
                                                                          strict=True))
        return 1 / (1 + np.exp(-linear))

    tau = probability("treated") - probability("control")
    assert np.allclose(candidates_df["expected_saved_value"], tau * candidates_df["clv"] - candidates_df["cost"])


def test_treat_says_an_empty_plan_has_nothing_to_carry_out(spark, tmp_path, capsys):
    # Ten customers: neither model can be trained, so the plan is empty and says why.
    settings = settings_for(tmp_path / "in", tmp_path / "wh", generate={"customers": 10, "seed": 3})
    generate_inputs(spark, settings, str(tmp_path / "in"))
    where = ["--input", str(tmp_path / "in"), "--warehouse", str(tmp_path / "wh"), "--snapshot-date", "2024-09-30"]
    assert main(["run", *where], spark=spark) == 0
    transactions = table(tmp_path, "in", "transactions")
    assert main(["treat", *where], spark=spark) == 2
    error = capsys.readouterr().err
    assert "the plan of 2024-09-30" in error and "is empty (no churn model" in error
    assert "nothing to carry out" in error
    assert len(table(tmp_path, "in", "transactions")) == len(transactions)
