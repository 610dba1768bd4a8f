"""Configuration: layering, precedence, and errors that name the key and where it came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from segscale.config import Settings, load_settings
from segscale.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"


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
    assert loaded["delta"]["backend"] == {"local.yaml": "delta-rs", "cluster.yaml": "delta-spark"}[name]


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
    with pytest.raises(ConfigError, match="churn_enabled: unknown key"):  # a typo of SEGSCALE_CHURN__ENABLED
        load_settings(environ={"SEGSCALE_CHURN_ENABLED": "false"})
