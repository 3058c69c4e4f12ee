"""Config loading and validation: every mistake names the key and says what is allowed."""

import pytest

from lookalike.config import Config, load_config
from lookalike.errors import ConfigError

from tests.support.paths import ROOT


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_shipped_local_config_is_valid_and_points_at_the_sample():
    cfg = load_config(str(ROOT / "conf" / "local.yaml"), require=("input.uri",))
    assert cfg.input.uri == "samples/clothing"
    assert cfg.spark.master == "local[*]"
    assert cfg.model.weights == "imagenet" and cfg.model.on_missing_weights == "efficientnet_lite0"


def test_defaults_match_the_documented_contract():
    cfg = Config()
    assert (cfg.model.name, cfg.model.weights, cfg.model.pooling) == ("vgg16", "imagenet", "avg")
    assert cfg.neighbours.k == 10
    assert "*.jpg" in cfg.input.pattern and "*.tiff" in cfg.input.pattern


def test_set_overrides_are_yaml_typed(tmp_path):
    cfg = load_config(write(tmp_path, "input: {uri: x}\n"),
                      ["model.batch_size=16", "neighbours.min_score=0.5", "model.weights=none",
                       "spark.conf={spark.executor.memory: 4g}", "s3.endpoint_url=null"])
    assert cfg.model.batch_size == 16 and isinstance(cfg.model.batch_size, int)
    assert cfg.neighbours.min_score == 0.5
    assert cfg.spark.conf == {"spark.executor.memory": "4g"}
    assert cfg.s3.endpoint_url is None


def test_unknown_key_is_rejected_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'model.batchsize'.*Did you mean 'model.batch_size'"):
        load_config(write(tmp_path, "model: {batchsize: 3}\n"))


def test_unknown_section_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'modle'.*Did you mean 'model'"):
        load_config(write(tmp_path, "modle: {}\n"))


def test_wrong_type_names_key_and_expected_type(tmp_path):
    with pytest.raises(ConfigError, match=r"'model.batch_size': expected an integer, got 'big'"):
        load_config(write(tmp_path, "model: {batch_size: big}\n"))
    with pytest.raises(ConfigError, match=r"'input.incremental': expected true/false"):
        load_config(None, ["input.incremental=3"])
    with pytest.raises(ConfigError, match=r"'model.batch_size': expected an integer, got True"):
        load_config(None, ["model.batch_size=true"])


def test_choices_and_bounds(tmp_path):
    with pytest.raises(ConfigError, match=r"'model.pooling': 'mean' is not one of avg, max, flatten"):
        load_config(None, ["model.pooling=mean"])
    with pytest.raises(ConfigError, match=r"'model.batch_size': 0 is not allowed; use a positive integer"):
        load_config(None, ["model.batch_size=0"])
    with pytest.raises(ConfigError, match=r"'input.max_error_fraction'"):
        load_config(None, ["input.max_error_fraction=1.5"])


def test_required_keys_are_checked_per_job():
    with pytest.raises(ConfigError, match=r"'input.uri' is required for this job.*--set input.uri="):
        load_config(None, [], require=("input.uri",))


def test_bad_regex_weights_and_files(tmp_path):
    with pytest.raises(ConfigError, match="input.id_regex"):
        load_config(None, ["input.id_regex=(unclosed"])
    with pytest.raises(ConfigError, match="model.weights"):
        load_config(None, ["model.weights=/no/such/file.bin"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="--set expects key=value"):
        load_config(None, ["model.batch_size"])


def test_yaml_is_loaded_safely(tmp_path):
    # A python/object tag would run code with yaml.load; safe_load refuses it.
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: !!python/object/apply:os.system ['true']\n"))


def test_fingerprint_changes_with_the_section():
    a, b = load_config(None, ["model.pooling=avg"]), load_config(None, ["model.pooling=max"])
    assert a.fingerprint("model") != b.fingerprint("model")
    assert a.fingerprint("input") == b.fingerprint("input")
