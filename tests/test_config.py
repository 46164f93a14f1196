import pytest

from wsis.config import dumps_toml, load_config, merge, parse_override
from wsis.errors import ConfigError
import tomllib


def test_presets_resolve_and_round_trip_through_toml():
    for preset in ("synthetic", "voc2012", "coco", "folder"):
        cfg = load_config(preset)
        assert tomllib.loads(dumps_toml(cfg)) == cfg


def test_voc_preset_has_the_paper_settings():
    cfg = load_config("voc2012")
    assert cfg["backbone"]["depth"] == 50
    assert cfg["train_cam"]["epochs"] == 5 and cfg["train_cam"]["batch_size"] == 16
    assert cfg["make_cam"]["scales"] == [1.0, 0.5, 1.5, 2.0]
    assert cfg["eval_cam"]["bg_threshold"] == 0.15


def test_overrides_parse_toml_values_and_bare_strings():
    assert parse_override("train_cam.epochs=3") == (["train_cam", "epochs"], 3)
    assert parse_override("make_cam.scales=[1.0, 0.5]") == (["make_cam", "scales"], [1.0, 0.5])
    assert parse_override("backbone.weights=imagenet") == (["backbone", "weights"], "imagenet")
    assert parse_override("backbone.weights=/a/b.pth") == (["backbone", "weights"], "/a/b.pth")


def test_set_applies_and_coerces_int_to_float():
    cfg = load_config("synthetic", overrides=["train_cam.epochs=3", "train_cam.lr=1"])
    assert cfg["train_cam"]["epochs"] == 3
    assert cfg["train_cam"]["lr"] == 1.0 and isinstance(cfg["train_cam"]["lr"], float)


@pytest.mark.parametrize("override, message", [
    ("train_cam.epoch=3", "unknown config key 'train_cam.epoch'"),
    ("nosuch.key=1", "unknown config key 'nosuch'"),
    ("train_cam.epochs=many", "'train_cam.epochs' must be int"),
    ("train_cam=3", "'train_cam' is a section"),
    ("novalue", "expected key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config("synthetic", overrides=[override])


def test_config_file_layers_over_preset(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[train_cam]\nepochs = 2\n")
    assert load_config("synthetic", f)["train_cam"]["epochs"] == 2
    f.write_text("[train_cam]\nepochz = 2\n")
    with pytest.raises(ConfigError, match=r"c.toml: unknown config key 'train_cam.epochz'"):
        load_config("synthetic", f)
    f.write_text("[train_cam\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config("synthetic", f)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown dataset preset 'nope'"):
        load_config("nope")


def test_merge_does_not_mutate_base():
    base = {"a": {"b": 1}}
    out = merge(base, {"a": {"b": 2}}, "x")
    assert base == {"a": {"b": 1}} and out == {"a": {"b": 2}}
