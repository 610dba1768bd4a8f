"""Configuration: layering, precedence, and errors that name the key and where it came from."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from frames import ROOT

from segscale.config import Settings, SparkSettings, load_settings
from segscale.errors import ConfigError, InputError
from segscale.models import registry

CONF = ROOT / "conf"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_base_yaml_states_exactly_the_built_in_defaults():
    assert load_settings(CONF / "base.yaml", environ={}) == Settings()


def leaves(tree: dict, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """Every (key path, value) a YAML mapping sets; lists are values."""
    return [pair for key, value in tree.items() for pair in (
        leaves(value, (*prefix, key)) if isinstance(value, dict) else [((*prefix, key), value)])]


@pytest.mark.parametrize("name", ["local.yaml", "cluster.yaml"])
def test_every_key_a_shipped_config_file_sets_takes_effect(name):
    """Each file loads over base.yaml, and the settings hold every value it sets: nothing it says is ignored."""
    loaded = load_settings(CONF / name, environ={}).model_dump(mode="json")
    own = leaves(yaml.safe_load((CONF / name).read_text()))
    assert own, f"{name} sets nothing"
    for path, value in own:
        found = loaded
        for key in path:
            found = found[key]
        assert found == json.loads(json.dumps(value, default=str)), f"{name}: {'.'.join(path)}"


# What each shipped file must give, over base.yaml: where it reads and publishes, which Delta backend and Spark
# master it runs on, where MLflow tracks (None: the file needs MLFLOW_TRACKING_URI), and that both models run.
EMBEDDED_STORE = f"sqlite:///{ROOT / 'mlflow.db'}"  # beside the relative warehouse/, in the checkout
SHIPPED = {
    "base.yaml": {"paths.input": "data/input", "paths.warehouse": "warehouse", "delta.backend": "auto",
                  "spark.master": "local[*]", "spark.driver_memory": "4g", "mlflow": EMBEDDED_STORE},
    "local.yaml": {"paths.input": "data/demo", "paths.warehouse": "warehouse", "delta.backend": "delta-rs",
                   "spark.master": "local[*]", "spark.driver_memory": "8g", "mlflow": EMBEDDED_STORE},
    "cluster.yaml": {"paths.input": "s3a://example-bucket/segscale/input",
                     "paths.warehouse": "s3a://example-bucket/segscale/warehouse", "delta.backend": "delta-spark",
                     "delta.max_rows_per_file": 5_000_000, "mlflow": None},
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_config_files_are_valid(name, monkeypatch):
    monkeypatch.chdir(ROOT)  # relative paths and the default MLflow store resolve against the checkout
    settings = load_settings(CONF / name, environ={})
    expected = SHIPPED[name]
    for key, value in expected.items():
        if key != "mlflow":
            section, attribute = key.split(".")
            assert getattr(getattr(settings, section), attribute) == value, f"{name}: {key}"
    assert settings.churn.enabled and settings.clv.enabled and settings.tiers.basis == "clv", name
    if expected["mlflow"] is None:
        with pytest.raises(InputError, match="set MLFLOW_TRACKING_URI"):
            registry.tracking_uri(settings.paths.warehouse)
    else:
        assert registry.tracking_uri(settings.paths.warehouse) == expected["mlflow"]
    if name == "cluster.yaml":  # under spark-submit the cluster's session is taken as it is: nothing to set there
        assert settings.spark == SparkSettings()


def test_every_config_file_shipped_or_named_by_a_schedule_is_checked():
    assert {path.name for path in CONF.glob("*.y*ml")} == set(SHIPPED)
    named = {match for path in (CONF / "schedules").rglob("*") if path.is_file()
             for match in re.findall(r"conf/([\w.-]+\.ya?ml)", path.read_text())}
    assert named and named <= set(SHIPPED)


def test_the_databricks_job_runs_cluster_yaml_with_the_tracking_it_sets(monkeypatch):
    bundle = yaml.safe_load((CONF / "schedules" / "databricks" / "databricks.yml").read_text())
    for job in bundle["resources"]["jobs"].values():
        environment = {name: str(value) for cluster in job["job_clusters"]
                       for name, value in cluster["new_cluster"].get("spark_env_vars", {}).items()}
        for task in job["tasks"]:
            parameters = task["spark_python_task"]["parameters"]
            config = parameters[parameters.index("--config") + 1].replace("${workspace.file_path}", str(ROOT))
            settings = load_settings(config, environ=environment)
            assert settings.delta.backend == "delta-spark"
            monkeypatch.setenv("MLFLOW_TRACKING_URI", environment["MLFLOW_TRACKING_URI"])
            assert registry.tracking_uri(settings.paths.warehouse) == "databricks"


def test_each_layer_overrides_the_one_below(tmp_path):
    """flag > SEGSCALE_* variable > chosen file > base.yaml beside it > built-in defaults, one key at a time."""
    base = write(tmp_path / "base.yaml", "delta:\n  max_commit_retries: 1\n  row_group_rows: 1000\n")
    chosen = write(tmp_path / "c.yaml", "delta:\n  max_commit_retries: 2\n")
    env = {"SEGSCALE_DELTA__MAX_COMMIT_RETRIES": "3"}
    assert load_settings(chosen, {"delta.max_commit_retries": 4}, environ=env).delta.max_commit_retries == 4
    assert load_settings(chosen, {"delta.max_commit_retries": None}, environ=env).delta.max_commit_retries == 3
    assert load_settings(chosen, environ={}).delta.max_commit_retries == 2
    assert load_settings(base, environ={}).delta.max_commit_retries == 1
    (tmp_path / "alone").mkdir()  # a file with no base.yaml beside it, setting nothing
    alone = write(tmp_path / "alone" / "c.yaml", "")
    assert load_settings(alone, environ={}).delta.max_commit_retries == Settings().delta.max_commit_retries == 5
    for settings in (load_settings(chosen, {"delta.max_commit_retries": 4}, environ=env),
                     load_settings(chosen, environ={})):
        assert settings.delta.row_group_rows == 1000  # set by base.yaml only: nothing above touches it
        assert settings.delta.compression == "zstd"  # set by no layer: the default


def test_environment_overrides_a_nested_key_and_keeps_its_siblings(tmp_path):
    config = write(tmp_path / "c.yaml", "churn:\n  risk_bands: {medium: 0.2}\n  estimator_params: {max_iter: 50}\n"
                                        "rfm:\n  lookback_days: 400\n")
    env = {"SEGSCALE_CHURN__RISK_BANDS__CRITICAL": "0.9", "SEGSCALE_CHURN__ESTIMATOR_PARAMS__LEARNING_RATE": "0.05",
           "SEGSCALE_RFM__LOOKBACK_DAYS": "null", "SEGSCALE_FEATURES__ONLINE_CHANNELS": "[web, app]"}
    settings = load_settings(config, environ=env)
    assert settings.churn.risk_bands.model_dump() == {"medium": 0.2, "high": 0.5, "critical": 0.9}
    # free-form parameters are typed as in YAML: the estimator gets a float, not the text "0.05"
    assert settings.churn.estimator_params == {"max_iter": 50, "learning_rate": 0.05}
    assert settings.rfm.lookback_days is None
    assert settings.features.online_channels == ("web", "app")


def test_mappings_merge_across_layers(tmp_path):
    write(tmp_path / "base.yaml", "spark:\n  conf: {spark.sql.ansi.enabled: 'true'}\n")
    config = write(tmp_path / "c.yaml", "spark:\n  conf: {spark.speculation: 'false'}\n")
    settings = load_settings(config, environ={"SEGSCALE_SPARK__CONF__SPARK.SPECULATION": "'true'"})  # YAML text
    assert settings.spark.conf == {"spark.sql.ansi.enabled": "true", "spark.speculation": "true"}


def test_a_whole_section_can_come_from_one_variable():
    settings = load_settings(environ={"SEGSCALE_DELTA": "{backend: delta-spark, compression: snappy}",
                                      "SEGSCALE_DELTA__COMPRESSION": "gzip"})
    assert (settings.delta.backend, settings.delta.compression) == ("delta-spark", "gzip")


def test_settings_itself_reads_neither_the_environment_nor_a_file(tmp_path, monkeypatch):
    """Settings() is the defaults wherever it runs; load_settings() reads os.environ and conf/local.yaml."""
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf" / "local.yaml", "generate:\n  customers: 11\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEGSCALE_DELTA__BACKEND", "delta-spark")
    assert Settings() == Settings.model_validate({})
    assert Settings().delta.backend == "auto" and Settings().generate.customers == 20_000
    loaded = load_settings()
    assert (loaded.delta.backend, loaded.generate.customers) == ("delta-spark", 11)


def test_a_bad_value_in_base_yaml_names_base_yaml_not_the_chosen_file(tmp_path):
    base = write(tmp_path / "base.yaml", "generate:\n  customers: many\n")
    chosen = write(tmp_path / "c.yaml", "generate:\n  seed: 3\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(chosen, environ={})
    assert str(caught.value) == ("invalid configuration:\n  generate.customers: Input should be a valid integer, "
                                 f"unable to parse string as an integer (got 'many') [from {base}]")


def test_a_bad_variable_over_a_good_file_names_the_variable_and_its_value(tmp_path):
    config = write(tmp_path / "c.yaml", "tiers:\n  high_value_share: 0.25\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={"SEGSCALE_TIERS__HIGH_VALUE_SHARE": "lots"})
    assert str(caught.value) == ("invalid configuration:\n  tiers.high_value_share: Input should be a valid number, "
                                 "unable to parse string as a number (got 'lots') "
                                 "[from environment SEGSCALE_TIERS__HIGH_VALUE_SHARE]")
    with pytest.raises(ConfigError, match=r"validation\.transaction_types: .*tuple \(got '\[unclosed'\) "
                                          r"\[from environment SEGSCALE_VALIDATION__TRANSACTION_TYPES\]"):
        load_settings(config, environ={"SEGSCALE_VALIDATION__TRANSACTION_TYPES": "[unclosed"})
    with pytest.raises(ConfigError, match=r"spark\.conf\.a: .*valid string \(got 1\) "
                                          r"\[from environment SEGSCALE_SPARK__CONF\]"):
        load_settings(config, environ={"SEGSCALE_SPARK__CONF": "{a: 1}"})


def test_a_config_file_that_is_not_a_mapping_is_refused(tmp_path):
    config = write(tmp_path / "c.yaml", "- delta\n- spark\n")
    with pytest.raises(ConfigError, match=rf"config file {config} must hold a mapping of sections, not list"):
        load_settings(config, environ={})


def test_local_yaml_is_layered_over_base_yaml(tmp_path):
    write(tmp_path / "base.yaml", "delta:\n  max_commit_retries: 9\n")
    local = write(tmp_path / "local.yaml", "delta:\n  backend: delta-rs\n")
    settings = load_settings(local, environ={})
    assert settings.delta.max_commit_retries == 9
    assert settings.delta.backend == "delta-rs"


def test_precedence_flag_over_environment_over_file_over_defaults(tmp_path):
    config = write(tmp_path / "c.yaml", "paths:\n  warehouse: from-file\n  input: from-file\n"
                                        "generate:\n  seed: 1\n")
    env = {"SEGSCALE_PATHS__WAREHOUSE": "from-env", "SEGSCALE_GENERATE__SEED": "2"}
    settings = load_settings(config, {"paths.warehouse": "from-flag"}, environ=env)
    assert settings.paths.warehouse == "from-flag"
    assert settings.generate.seed == 2
    assert settings.paths.input == "from-file"
    assert settings.delta.max_commit_retries == Settings().delta.max_commit_retries


def test_config_file_can_come_from_the_environment(tmp_path):
    config = write(tmp_path / "c.yaml", "generate:\n  customers: 77\n")
    assert load_settings(environ={"SEGSCALE_CONFIG": str(config)}).generate.customers == 77


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    config = write(tmp_path / "c.yaml", "delta:\n  backnd: delta-rs\n")
    with pytest.raises(ConfigError, match=rf"delta\.backnd: unknown key \[from {config}\]"):
        load_settings(config, environ={})


def test_wrong_type_names_the_key_the_value_and_the_file(tmp_path):
    config = write(tmp_path / "c.yaml", "generate:\n  customers: many\n")
    with pytest.raises(ConfigError, match=rf"generate\.customers: .*integer.*'many'.*\[from {config}\]"):
        load_settings(config, environ={})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("delta:\n  vacuum_retention_hours: -1\n", r"delta\.vacuum_retention_hours"),
        ("generate:\n  dirty_rate: 1.5\n", r"generate\.dirty_rate"),
        ("generate:\n  start: 2024-01-01\n  end: 2023-01-01\n", r"generate: .*must be after start"),
        ("delta:\n  backend: parquet\n", r"delta\.backend"),
    ],
    ids=["negative-hours", "share-above-1", "end-before-start", "unknown-choice"],
)
def test_impossible_values_are_refused_with_the_file(tmp_path, text, key):
    config = write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError, match=rf"{key}.*\[from {config}"):
        load_settings(config, environ={})


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match=r"delta\.max_commit_retries.*environment SEGSCALE_DELTA__MAX_COMMIT_RETRIES"):
        load_settings(environ={"SEGSCALE_DELTA__MAX_COMMIT_RETRIES": "-3"})
    with pytest.raises(ConfigError, match=r"delta\.colour: unknown key \[from environment SEGSCALE_DELTA__COLOUR\]"):
        load_settings(environ={"SEGSCALE_DELTA__COLOUR": "blue"})


def test_bad_flag_value_names_the_flag():
    with pytest.raises(ConfigError, match=r"generate\.customers.*command-line flag --customers"):
        load_settings(overrides={"generate.customers": -5}, environ={})


def test_missing_file_and_invalid_yaml_are_reported(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", environ={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path / "bad.yaml", "delta: [unclosed\n"), environ={})


def test_config_hash_follows_what_changes_results_only():
    base = Settings()
    assert base.config_hash() == Settings().config_hash()
    moved = Settings.model_validate({"paths": {"warehouse": "elsewhere"}, "spark": {"master": "local[1]"}})
    assert moved.config_hash() == base.config_hash()
    changed = Settings.model_validate({"delta": {"allow_schema_evolution": True}})
    assert changed.config_hash() != base.config_hash()


def test_tiers_by_clv_need_clv_and_the_message_names_both_keys():
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"SEGSCALE_CLV__ENABLED": "false"})
    message = str(caught.value)
    assert "tiers.basis is clv but clv.enabled is false: set tiers.basis: monetary" in message
    assert "environment SEGSCALE_CLV__ENABLED]" in message and "'paths'" not in message
    settings = load_settings(environ={"SEGSCALE_CLV__ENABLED": "false", "SEGSCALE_TIERS__BASIS": "monetary"})
    assert settings.tiers.basis == "monetary"


def test_retention_treatments_are_checked_where_they_are_set():
    variable = "SEGSCALE_RETENTION__TREATMENTS__POTENTIAL__UPLIFT"
    with pytest.raises(ConfigError, match=rf"retention.treatments.potential.uplift: .*less than or equal to 1 "
                                          rf"\(got 1.5\) \[from environment {variable}\]"):
        load_settings(environ={"SEGSCALE_RETENTION__TREATMENTS__POTENTIAL__UPLIFT": "1.5"})
    with pytest.raises(ConfigError, match="retention.budget: Input should be greater than or equal to 0"):
        load_settings(environ={"SEGSCALE_RETENTION__BUDGET": "-1"})


def test_only_variables_naming_a_section_are_config():
    environ = {"SEGSCALE_WAREHOUSE": "/notebooks/read/this", "SEGSCALE_HOME": "/opt/segscale",
               "SEGSCALE_REQUIRE_BROWSER": "1", "SEGSCALE_RFM__BINS": "4"}
    assert load_settings(environ=environ).rfm.bins == 4
    with pytest.raises(ConfigError, match=r"churn_enabled: unknown key \[from environment SEGSCALE_CHURN_ENABLED\]"):
        load_settings(environ={"SEGSCALE_CHURN_ENABLED": "false"})  # a typo of SEGSCALE_CHURN__ENABLED
    with pytest.raises(ConfigError, match=r"colour\.delta: unknown key \[from environment SEGSCALE_COLOUR__DELTA\]"):
        load_settings(environ={"SEGSCALE_COLOUR__DELTA": "blue"})


def test_an_open_shuffle_partition_count_follows_the_local_inputs_size(tmp_path):
    from segscale.session import INPUT_BYTES_PER_PARTITION, default_shuffle_partitions

    def input_of(total: int) -> Path:
        root = tmp_path / f"in-{total}"
        for name, share in (("customers", 0.1), ("transactions/_delta_log", 0.0), ("transactions", 0.9)):
            (root / name).mkdir(parents=True, exist_ok=True)
            with open(root / name / "part-0.parquet", "wb") as data:
                data.truncate(int(total * share))  # sparse: the size without the bytes
        return root

    assert default_shuffle_partitions(str(input_of(0)), cores=2) == 8  # 4 per core at least
    assert default_shuffle_partitions(str(input_of(8 * INPUT_BYTES_PER_PARTITION)), cores=2) == 8
    assert default_shuffle_partitions(str(input_of(48 * INPUT_BYTES_PER_PARTITION - 5)), cores=2) == 48
    assert default_shuffle_partitions(f"file://{input_of(100 * INPUT_BYTES_PER_PARTITION)}", cores=4) == 100
    assert default_shuffle_partitions(str(tmp_path / "missing"), cores=2) == 8
    assert default_shuffle_partitions("s3://bucket/inputs", cores=2) == 8  # not listable before the session
    assert default_shuffle_partitions(None, cores=3) == 12
