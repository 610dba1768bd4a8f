"""Load and validate segscale's configuration.

`Settings` is a pydantic-settings `BaseSettings`. `load_settings` layers it, highest first: command-line flags,
SEGSCALE_<SECTION>__<KEY> environment variables, the chosen YAML file, conf/base.yaml next to it, the defaults below
(mirrored by conf/base.yaml). Every source records the keys it set, so a bad value is reported with the flag,
variable or file it came from. `Settings(...)` itself is the defaults and what it is given, nothing from outside.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from pydantic_settings.sources.utils import parse_env_vars

from segscale.contract import CONTRACT
from segscale.errors import ConfigError

ENV_PREFIX = "SEGSCALE_"
ENV_NESTED_DELIMITER = "__"
# The one SEGSCALE_* variable that is not a config key: it names the config file.
CONFIG_FILE_ENV = "SEGSCALE_CONFIG"
DEFAULT_CONFIG_FILE = Path("conf/local.yaml")
BASE_FILE_NAME = "base.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathSettings(_Section):
    input: str = "data/input"
    warehouse: str = "warehouse"


InputTable = Literal["customers", "transactions", "interactions", "treatments"]


class InputSettings(_Section):
    # Per input table, contract column -> the input's column of another name, or a Spark SQL expression over the
    # input's columns (e.g. amount: "abs(Quantity * UnitPrice)"). docs/input-contract.md.
    columns: dict[InputTable, dict[str, str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _contract_columns(self) -> InputSettings:
        for table, mapping in self.columns.items():
            unknown = sorted(set(mapping) - {c.name for c in CONTRACT[table]})
            if unknown:
                raise ValueError(f"columns.{table} maps {unknown}, which are not columns of the {table} contract "
                                 f"({', '.join(c.name for c in CONTRACT[table])})")
            empty = sorted(k for k, v in mapping.items() if not str(v).strip())
            if empty:
                raise ValueError(f"columns.{table}.{empty[0]} is empty: name an input column or an SQL expression")
        return self


class SparkSettings(_Section):
    # Used only when segscale builds its own (embedded) session; under spark-submit the cluster's session is
    # taken as it is.
    master: str = "local[*]"
    app_name: str = "segscale"
    # None sizes shuffle partitions to the input (one per 32 MiB of a local input directory, at least 4 per core;
    # segscale.session); adaptive execution coalesces small ones.
    shuffle_partitions: int | None = Field(default=None, gt=0)
    driver_memory: str = "4g"
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "WARN"
    conf: dict[str, str] = Field(default_factory=dict)


class DeltaSettings(_Section):
    # auto: delta-spark when the Delta SQL extension is configured on the session, delta-rs otherwise.
    backend: Literal["auto", "delta-rs", "delta-spark"] = "auto"
    allow_schema_evolution: bool = False
    max_commit_retries: int = Field(default=5, ge=0)
    vacuum_retention_hours: float = Field(default=168.0, ge=0)
    # Rows per data file before an executor starts a new one; rows per Parquet row group.
    max_rows_per_file: int = Field(default=2_000_000, gt=0)
    row_group_rows: int = Field(default=262_144, gt=0)
    compression: Literal["snappy", "zstd", "gzip", "none"] = "zstd"


class MaintenanceSettings(_Section):
    """`segscale maintain` (docs/tables.md, "Maintenance")."""

    # Snapshot retention: a snapshot leaves every snapshot table once no rule set here keeps it (neither among the
    # newest keep_snapshots nor within keep_days of the newest). Both null: every snapshot is kept.
    keep_snapshots: int | None = Field(default=None, ge=1)
    keep_days: int | None = Field(default=None, ge=0)
    # Vacuum (`segscale vacuum` and `maintain`) also keeps every version the newest keep_runs completed runs
    # recorded, whatever its age, so readers can still read those runs (`--run-id`, `--as-of`).
    keep_runs: int = Field(default=3, ge=0)
    # Compaction and clustering write files of about this size.
    target_file_mb: float = Field(default=128.0, gt=0)


class MetastoreSettings(_Section):
    """`segscale catalog`: where the published tables are registered by name (docs/querying.md)."""

    # The database (schema) the tables are registered in: `segscale.customer_scores`, ...
    database: str = Field(default="segscale", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # The embedded session's Derby metastore directory (null: `metastore` beside the warehouse). A session given by
    # spark-submit uses the cluster's metastore instead.
    path: str | None = None


class TreatmentEffects(_Section):
    """The true relative reduction of churn each tier's treatment achieves in generated data (`segscale treat`);
    deliberately unlike retention.treatments' uplifts, so the loop has something to learn."""

    high_value: float = Field(default=0.10, ge=0, le=1)
    potential: float = Field(default=0.25, ge=0, le=1)
    regular: float = Field(default=0.03, ge=0, le=1)


class GenerateSettings(_Section):
    customers: int = Field(default=20_000, gt=0)
    seed: int = 42
    start: dt.date = dt.date(2022, 1, 1)
    end: dt.date = dt.date(2024, 12, 31)
    dirty_rate: float = Field(default=0.0, ge=0, le=1)
    prospect_share: float = Field(default=0.15, ge=0, le=1)
    mean_days_between_purchases: float = Field(default=60.0, gt=0)
    mean_order_value: float = Field(default=80.0, gt=0)
    return_share: float = Field(default=0.05, ge=0, le=1)
    format: Literal["delta", "parquet", "csv"] = "delta"
    treatment_effects: TreatmentEffects = Field(default_factory=TreatmentEffects)

    @model_validator(mode="after")
    def _end_after_start(self) -> GenerateSettings:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        return self


class ValidationSettings(_Section):
    # A run stops before publishing when any input's bad share exceeds this.
    max_bad_ratio: float = Field(default=0.05, ge=0, le=1)
    # Transactions/interactions of a customer_id missing from customers: quarantine them or keep them.
    unknown_customer: Literal["quarantine", "keep"] = "quarantine"
    amount_ceiling: float = Field(default=100_000.0, gt=0)
    min_timestamp: dt.date = dt.date(1990, 1, 1)
    transaction_types: tuple[str, ...] = ("purchase", "return")
    interaction_kinds: tuple[str, ...] = ("service_call", "complaint", "campaign_touch", "survey")


class FeatureSettings(_Section):
    online_channels: tuple[str, ...] = ("online", "app")
    complaint_kinds: tuple[str, ...] = ("complaint",)


class SegmentRule(_Section):
    """A named RFM segment: inclusive score ranges; the first matching rule names a buyer."""

    name: str
    r: tuple[int, int]
    f: tuple[int, int]
    m: tuple[int, int] = (1, 5)


class CutPoints(_Section):
    recency: list[float] | None = None
    frequency: list[float] | None = None
    monetary: list[float] | None = None


class RfmSettings(_Section):
    bins: int = Field(default=5, ge=2, le=10)
    # Days of history that bound frequency and monetary; null = all history.
    lookback_days: int | None = Field(default=None, gt=0)
    cut_points: CutPoints = Field(default_factory=CutPoints)
    segments: tuple[SegmentRule, ...] = (
        SegmentRule(name="Champions", r=(5, 5), f=(4, 5)),
        SegmentRule(name="Loyal Customers", r=(3, 4), f=(4, 5)),
        SegmentRule(name="Cannot Lose Them", r=(1, 1), f=(5, 5)),
        SegmentRule(name="At Risk", r=(1, 2), f=(3, 5)),
        SegmentRule(name="Potential Loyalists", r=(4, 5), f=(2, 3)),
        SegmentRule(name="New Customers", r=(5, 5), f=(1, 1)),
        SegmentRule(name="Promising", r=(4, 4), f=(1, 1)),
        SegmentRule(name="Need Attention", r=(3, 3), f=(3, 3)),
        SegmentRule(name="About To Sleep", r=(3, 3), f=(1, 2)),
        SegmentRule(name="Hibernating", r=(2, 2), f=(1, 2)),
        SegmentRule(name="Lost", r=(1, 1), f=(1, 2)),
    )

    @model_validator(mode="after")
    def _cut_points_fit_the_bins(self) -> RfmSettings:
        for dimension in ("recency", "frequency", "monetary"):
            cuts = getattr(self.cut_points, dimension)
            if cuts is None:
                continue
            if len(cuts) != self.bins - 1:
                raise ValueError(f"cut_points.{dimension} needs bins - 1 = {self.bins - 1} values, got {len(cuts)}")
            if any(b <= a for a, b in zip(cuts, cuts[1:], strict=False)):
                raise ValueError(f"cut_points.{dimension} must be strictly ascending, got {cuts}")
        return self

    @model_validator(mode="after")
    def _segments_cover_every_score(self) -> RfmSettings:
        scores = range(1, self.bins + 1)
        uncovered = [
            (r, f, m) for r in scores for f in scores for m in scores
            if not any(s.r[0] <= r <= s.r[1] and s.f[0] <= f <= s.f[1] and s.m[0] <= m <= s.m[1]
                       for s in self.segments)
        ]
        if uncovered:
            raise ValueError(f"segments leave {len(uncovered)} (r, f, m) score combinations unnamed, e.g. "
                             f"{uncovered[:3]}; add rules so every combination of 1..{self.bins} matches one")
        return self


class TierSettings(_Section):
    # clv: tiers by predicted future value (needs clv.enabled); monetary: by spend so far.
    basis: Literal["monetary", "clv"] = "clv"
    high_value_share: float = Field(default=0.2, gt=0, lt=1)
    potential_share: float = Field(default=0.3, ge=0, lt=1)

    @model_validator(mode="after")
    def _shares_fit(self) -> TierSettings:
        if self.high_value_share + self.potential_share > 1:
            raise ValueError("high_value_share + potential_share must not exceed 1")
        return self


class LifecycleSettings(_Section):
    churned_after_days: int = Field(default=365, gt=0)
    at_risk_after_days: int = Field(default=120, gt=0)
    loyal_min_purchases: int = Field(default=5, ge=2)

    @model_validator(mode="after")
    def _ordered(self) -> LifecycleSettings:
        if self.at_risk_after_days >= self.churned_after_days:
            raise ValueError("at_risk_after_days must be below churned_after_days")
        return self


class RiskBands(_Section):
    """Lower bounds (inclusive) of the churn risk bands; below `medium` is low."""

    medium: float = Field(default=0.3, gt=0, lt=1)
    high: float = Field(default=0.5, gt=0, lt=1)
    critical: float = Field(default=0.7, gt=0, lt=1)

    @model_validator(mode="after")
    def _ascending(self) -> RiskBands:
        if not self.medium < self.high < self.critical:
            raise ValueError(f"bands must ascend: medium ({self.medium}) < high ({self.high}) < critical "
                             f"({self.critical})")
        return self


class ChurnSettings(_Section):
    # false: publish customer_scores without churn scores (the churn columns stay null) and never train.
    enabled: bool = True
    # A buyer at a cutoff is churned when they make no purchase in the following horizon_days.
    horizon_days: int = Field(default=90, gt=0)
    # Labelled cutoffs D - h, D - 2h, ...: the most recent is the holdout, the earlier ones train.
    labelled_cutoffs: int = Field(default=3, ge=2, le=24)
    # Fewer churned or retained buyers on either side of the out-of-time split, and the run publishes without a
    # new churn model, saying why.
    min_rows_per_class: int = Field(default=20, ge=2)
    # Rows pulled to the driver, per side (training rows, holdout rows); sampled by label with sample_seed.
    max_train_rows: int = Field(default=300_000, gt=0)
    sample_seed: int = 7
    # Any scikit-learn classifier with predict_proba, by import path, and its parameters.
    estimator: str = "sklearn.ensemble.HistGradientBoostingClassifier"
    estimator_params: dict[str, Any] = Field(default_factory=lambda: {
        "max_iter": 200, "learning_rate": 0.1, "class_weight": "balanced", "random_state": 7})
    # Probability calibration on out-of-fold predictions of the training rows.
    calibration: Literal["isotonic", "sigmoid"] = "isotonic"
    calibration_folds: int = Field(default=3, ge=2, le=10)
    experiment: str = Field(default="segscale", min_length=1)
    model_name: str = Field(default="segscale_churn", min_length=1)
    # A new version becomes champion unless its holdout ROC-AUC is worse than the champion's by more than this.
    promotion_tolerance: float = Field(default=0.005, ge=0, lt=1)
    risk_bands: RiskBands = Field(default_factory=RiskBands)

    @model_validator(mode="after")
    def _enough_rows_to_calibrate(self) -> ChurnSettings:
        if self.min_rows_per_class < self.calibration_folds:
            raise ValueError(f"min_rows_per_class ({self.min_rows_per_class}) must be at least calibration_folds "
                             f"({self.calibration_folds}): each fold needs a churned and a retained buyer")
        return self

    @field_validator("estimator")
    @classmethod
    def _estimator_is_an_import_path(cls, value: str) -> str:
        module, _, name = value.rpartition(".")
        if not module or not name.isidentifier():
            raise ValueError(f"expected a class import path like sklearn.ensemble.HistGradientBoostingClassifier, "
                             f"got {value!r}")
        return value


class ClvSettings(_Section):
    # false: no fitting or CLV scoring; the CLV columns of customer_scores stay null (needs tiers.basis: monetary).
    enabled: bool = True
    # Days ahead that expected purchases and CLV cover, and the yearly rate future spend is discounted at.
    horizon_days: int = Field(default=365, gt=0)
    annual_discount_rate: float = Field(default=0.10, ge=0, lt=1)
    # The fit's histograms hold exact days and exact spend while they have at most max_histogram_rows rows; beyond,
    # recency and T are rounded to the finest of 2, 3, 7, 14, 28, 56, 91 days and spend to the finest log grid
    # that fit. bin_days (1: exact days) or spend_bin_relative (0: exact) fix a resolution instead.
    max_histogram_rows: int = Field(default=250_000, ge=1000)
    bin_days: int | None = Field(default=None, ge=1, le=91)
    spend_bin_relative: float | None = Field(default=None, ge=0, lt=1)
    # The models are fitted with time in units of time_unit_days (7: weeks, as the papers do).
    time_unit_days: int = Field(default=7, ge=1, le=365)
    # Fewer repeat buyers (BG/NBD), or repeat buyers with positive spend (Gamma-Gamma), and the run publishes
    # without CLV, saying why.
    min_repeat_buyers: int = Field(default=10, ge=2)
    max_iterations: int = Field(default=5000, ge=100)
    model_name: str = Field(default="segscale_clv", min_length=1)


class Treatment(_Section):
    """What the retention plan offers a value tier: its cost per customer per planning period, the expected
    relative reduction of the customer's churn probability, and optional limits: a budget of the tier's own
    (within the plan's) and a capacity, the most customers it can treat (one-to-one service: accounts per account
    manager × managers)."""

    name: str = Field(min_length=1)
    cost: float = Field(ge=0)
    uplift: float = Field(gt=0, le=1)
    budget: float | None = Field(default=None, ge=0)
    capacity: int | None = Field(default=None, ge=0)


class Treatments(_Section):
    high_value: Treatment = Treatment(name="dedicated_account_manager", cost=25.0, uplift=0.30)
    potential: Treatment = Treatment(name="email_sms_cadence", cost=1.5, uplift=0.10)
    regular: Treatment = Treatment(name="automated_service", cost=0.05, uplift=0.03)


class RetentionSettings(_Section):
    # Money to spend per planning period, in the currency of the transactions' amounts.
    budget: float = Field(default=50_000.0, ge=0)
    # The share of the plan's customers kept untreated as a randomized control group, the same in every tier,
    # lifecycle stage and churn-risk decile; each customer's draw is a hash of (holdout_seed, snapshot, customer).
    holdout_share: float = Field(default=0.10, ge=0, le=0.5)
    holdout_seed: int = 7
    # The CLV a plan values customers at: 0.5 the prediction, lower quantiles of its band from the CLV model's
    # parameter uncertainty are more conservative (0.1: clv_p10). Customers without a band keep their prediction.
    clv_quantile: float = Field(default=0.5, ge=0.01, le=0.99)
    # A plan is measured once churn.horizon_days have passed: treated against control, with intervals at this level.
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    # true: each tier's uplift is the posterior median learned from the measured plans (the configured uplift is
    # its prior, worth uplift_prior_strength customers per group); false: always the configured uplift.
    learn_uplift: bool = True
    uplift_prior_strength: float = Field(default=200.0, gt=0)
    # true: after measuring a plan, the run also fits a per-customer uplift model (a T-learner) on the randomized
    # rows of every measured plan; plans value each candidate by its own predicted uplift when the model ranks
    # better than random targeting on held-out rows (Qini coefficient > 0), else by the tier uplifts.
    uplift_model: bool = False
    # tier_economics warns when a tier's cost to serve over the last year exceeds this share of its revenue, and
    # when the high-value tier's share of predicted value falls by more than max_value_share_drop since the last
    # snapshot.
    max_cost_share: float = Field(default=0.25, gt=0)
    max_value_share_drop: float = Field(default=0.02, ge=0, le=1)
    treatments: Treatments = Field(default_factory=Treatments)


class MonitoringSettings(_Section):
    """model_monitoring, every run: drift of the churn model's features and scores against its training rows
    (PSI), and, once a published snapshot's churn horizon has passed, its churn scores and CLV predictions against
    what happened. An alert crosses a threshold below; retrain_on names the alerts after which the next `segscale
    run` trains new versions (docs/models.md, "Monitoring")."""

    enabled: bool = True
    max_psi: float = Field(default=0.25, gt=0)
    max_auc_drop: float = Field(default=0.05, ge=0)
    max_calibration_gap: float = Field(default=0.05, gt=0)
    max_clv_error: float = Field(default=0.25, gt=0)
    retrain_on: list[Literal["feature_drift", "score_drift", "backtest"]] = Field(
        default_factory=lambda: ["score_drift", "backtest"])


class QueueSettings(_Section):
    """at_risk_queue: the customers of `tiers` whose churn probability is at least min_churn_probability, the
    highest value at risk first and at most max_customers of them, plus every customer listed in `customers`
    (on request), each with the top reasons behind their churn probability (TreeSHAP, docs/models.md)."""

    enabled: bool = True
    tiers: list[Literal["high_value", "potential", "regular"]] = Field(
        default_factory=lambda: ["high_value", "potential"])
    min_churn_probability: float = Field(default=0.5, ge=0, le=1)
    max_customers: int = Field(default=50_000, ge=0)
    customers: list[str] = Field(default_factory=list)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid", frozen=True, case_sensitive=False, env_prefix=ENV_PREFIX,
                                      env_nested_delimiter=ENV_NESTED_DELIMITER)

    paths: PathSettings = Field(default_factory=PathSettings)
    input: InputSettings = Field(default_factory=InputSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    delta: DeltaSettings = Field(default_factory=DeltaSettings)
    maintenance: MaintenanceSettings = Field(default_factory=MaintenanceSettings)
    metastore: MetastoreSettings = Field(default_factory=MetastoreSettings)
    generate: GenerateSettings = Field(default_factory=GenerateSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    rfm: RfmSettings = Field(default_factory=RfmSettings)
    tiers: TierSettings = Field(default_factory=TierSettings)
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)
    churn: ChurnSettings = Field(default_factory=ChurnSettings)
    clv: ClvSettings = Field(default_factory=ClvSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)

    @model_validator(mode="after")
    def _lifecycle_covers_every_buyer(self) -> Settings:
        # new, repeat and loyal count purchases within rfm.lookback_days; a buyer who is not yet at risk must have
        # one there, or no stage describes them.
        lookback, at_risk = self.rfm.lookback_days, self.lifecycle.at_risk_after_days
        if lookback is not None and lookback <= at_risk:
            raise ValueError(f"rfm.lookback_days ({lookback}) must be longer than lifecycle.at_risk_after_days "
                             f"({at_risk}): a buyer whose last purchase is {lookback} to {at_risk} days old is not at "
                             f"risk yet but has no purchase within the lookback, so no lifecycle stage (new, repeat, "
                             f"loyal count the purchases within it) would describe them")
        return self

    @model_validator(mode="after")
    def _clv_basis_needs_clv(self) -> Settings:
        if self.tiers.basis == "clv" and not self.clv.enabled:
            raise ValueError("tiers.basis is clv but clv.enabled is false: set tiers.basis: monetary, or enable clv")
        return self

    def config_hash(self) -> str:
        """Hash of everything that changes what the pipeline computes (not where or on what it runs)."""
        relevant = self.model_dump(mode="json", exclude={"paths", "spark", "generate", "maintenance",
                                                                  "metastore"})
        canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Highest first: init (the flags), environment, the chosen file, base.yaml; the defaults come last."""
        layers = _LAYERS.get()
        if layers is None:  # Settings(...) outside load_settings: the defaults and its arguments only
            return (init_settings,)
        return (init_settings, _Environment(settings_cls, layers.environ, layers.origins),
                *(_YamlFile(settings_cls, path, layers.origins) for path in reversed(layers.files)))


@dataclass
class _Layers:
    """What load_settings puts under the flags: config files (lowest first) and the environment; `origins` maps
    each dotted key to the flag, variable or file that set it (the highest layer first, so setdefault)."""

    files: tuple[Path, ...]
    environ: Mapping[str, str]
    origins: dict[str, str] = field(default_factory=dict)


_LAYERS: contextvars.ContextVar[_Layers | None] = contextvars.ContextVar("segscale_config_layers", default=None)


class _Environment(EnvSettingsSource):
    """SEGSCALE_<SECTION>__<KEY> variables of `environ`. A value is read as YAML, as it would be in a file
    (`false`, `7`, `null`, `[a, b]`), also inside free-form mappings such as churn.estimator_params."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str], origins: dict[str, str]):
        super().__init__(settings_cls)
        self.env_vars = parse_env_vars(environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)
        self.config_variables = {name: (name[len(ENV_PREFIX):].lower(), raw)
                                 for name, raw in sorted(environ.items()) if is_config_variable(name)}
        for name, (key, _) in self.config_variables.items():
            origins.setdefault(key.replace(ENV_NESTED_DELIMITER, "."), f"environment {name}")

    def decode_complex_value(self, field_name: str, field: FieldInfo | None, value: Any) -> Any:
        return _yaml_value(value)

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        for key, raw in self.config_variables.values():
            *parents, leaf = key.split(ENV_NESTED_DELIMITER)
            if (parents or [leaf])[0] not in self.settings_cls.model_fields:
                # names no section (a typo like SEGSCALE_CHURN_ENABLED): extra="forbid" refuses it as an unknown key
                data[key.replace(ENV_NESTED_DELIMITER, ".")] = raw
                continue
            node: Any = data
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and node.get(leaf) == raw and raw != "":
                node[leaf] = _yaml_value(raw)  # a scalar the library left as the variable's text
        return data


class _YamlFile(YamlConfigSettingsSource):
    """One YAML config file; unreadable YAML or a file that is not a mapping of sections is a ConfigError."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path, origins: dict[str, str]):
        super().__init__(settings_cls, yaml_file=path)
        for key in _dotted_keys(self.yaml_data):
            origins.setdefault(key, str(path))

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {file_path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {file_path} must hold a mapping of sections, not {type(data).__name__}")
        return data


def load_settings(
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the effective settings from defaults, files, environment and flags (dotted keys in `overrides`)."""
    environ = os.environ if environ is None else environ
    files: tuple[Path, ...] = ()
    path = _choose_config_file(config_file, environ)
    if path is not None:
        base = path.parent / BASE_FILE_NAME
        files = (base, path) if base.exists() and base.resolve() != path.resolve() else (path,)

    flags: dict[str, Any] = {}
    layers = _Layers(files, environ)
    for key, value in (overrides or {}).items():
        if value is not None:
            *sections, name = key.split(".")
            node = flags
            for section in sections:
                node = node.setdefault(section, {})
            node[name] = value
            layers.origins[key] = f"command-line flag --{name.replace('_', '-')}"

    token = _LAYERS.set(layers)
    try:
        return Settings(**flags)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, layers.origins)) from None
    finally:
        _LAYERS.reset(token)


def is_config_variable(name: str) -> bool:
    """SEGSCALE_<SECTION>__<KEY> sets a config key (names are case-insensitive, as pydantic-settings reads them).
    A SEGSCALE_* variable whose name starts with a section's name is taken as one too, so a typo
    (SEGSCALE_CHURN_ENABLED) is an error rather than silently ignored; other SEGSCALE_* variables (SEGSCALE_CONFIG,
    SEGSCALE_WAREHOUSE for the notebooks) are not config."""
    upper = name.upper()
    if not upper.startswith(ENV_PREFIX) or upper == CONFIG_FILE_ENV:
        return False
    rest = upper[len(ENV_PREFIX):].lower()
    return ENV_NESTED_DELIMITER in rest or any(rest == section or rest.startswith(section + "_")
                                               for section in Settings.model_fields)


def _choose_config_file(config_file: str | Path | None, environ: Mapping[str, str]) -> Path | None:
    chosen = config_file or environ.get(CONFIG_FILE_ENV)
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def _yaml_value(raw: Any) -> Any:
    """A variable's text as YAML; text that is not valid YAML stays text, for validation to refuse by key."""
    try:
        return yaml.safe_load(raw) if isinstance(raw, str) else raw
    except yaml.YAMLError:
        return raw


def _dotted_keys(tree: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            yield from _dotted_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _describe(exc: ValidationError, sources: Mapping[str, str]) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if not loc:  # a rule across sections: its message names the keys; say which layers set them
            message = err["msg"].removeprefix("Value error, ")
            origin = ", ".join(sorted({v for k, v in sources.items() if k in message})) or "defaults"
            lines.append(f"{message} [from {origin}]")
            continue
        key = ".".join(loc)
        origin = next((sources[".".join(loc[:n])] for n in range(len(loc), 0, -1)
                       if ".".join(loc[:n]) in sources), None)
        if origin is None:  # a rule over a whole section: name every layer that set a key in it
            origin = ", ".join(sorted({v for k, v in sources.items() if k.startswith(key + ".")})) or "defaults"
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        got = f" (got {err['input']!r})" if err["type"] != "extra_forbidden" and "input" in err else ""
        lines.append(f"{key}: {message}{got} [from {origin}]")
    return "invalid configuration:\n  " + "\n  ".join(lines)
