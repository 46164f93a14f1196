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


# ------------------------------------------------------------- the schema (issue 9.10)

from wsis.config import read_toml, CONFIG_DIR  # noqa: E402
from wsis.schema import CROSS_CHECKS, RULES, same_type, validate  # noqa: E402


def test_every_rule_names_a_key_of_base_toml_and_the_presets_pass():
    base = read_toml(CONFIG_DIR / "base.toml")
    for dotted in RULES:
        section, key = dotted.split(".")
        assert key in base.get(section, {}), f"rule for unknown key {dotted}"
    for preset in ("synthetic", "voc2012", "coco", "folder"):
        load_config(preset)    # validates


def test_list_elements_are_type_checked_nested_lists_too():
    assert same_type([1.0], [1, 2.5]) and not same_type([1.0], ["a"]) and not same_type([1.0], [True])
    assert same_type([[1, 2]], [[3, 4], [5, 6]]) and not same_type([[1, 2]], [[3, "x"]])
    assert not same_type([[1, 2]], [3, 4]) and same_type(["a"], []) and same_type([], [1])
    with pytest.raises(ConfigError, match=r"'solo.scale_ranges' must be list of list of int"):
        load_config("synthetic", overrides=["solo.scale_ranges=[[1, 2], [2, 'x']]"])


def test_a_key_without_a_rule_gets_only_the_type_check():
    base = read_toml(CONFIG_DIR / "base.toml")
    base["run"]["new_key_from_elsewhere"] = 3
    cfg = {s: dict(v) for s, v in base.items()}
    cfg["run"]["new_key_from_elsewhere"] = -100          # no rule: any int
    validate(cfg, base)
    cfg["run"]["new_key_from_elsewhere"] = "x"
    with pytest.raises(ConfigError, match=r"run.new_key_from_elsewhere = 'x': must be int"):
        validate(cfg, base)


def test_cross_checks_name_both_keys():
    base = read_toml(CONFIG_DIR / "base.toml")
    cfg = {s: dict(v) for s, v in base.items()}
    cfg["solo"]["grids"] = [40, 36, 24, 16]
    problems = [p for p in (c(cfg) for c in CROSS_CHECKS) if p]
    assert problems == ["solo.grids has 4 levels but solo.scale_ranges has 5; give one scale range per grid"]


@pytest.mark.parametrize("override, message", [
    ("make_cam.scales=[0.0]", "make_cam.scales = [0.0]: element 0 (0.0) must be > 0"),
    ("train_irn.epochs=0", "train_irn.epochs = 0: must be >= 1"),
    ("ir_label.crf_scale=0.0", "ir_label.crf_scale = 0.0: must be > 0"),
    ("ir_label.crf_scale=2.0", "ir_label.crf_scale = 2.0: must be in [0.0, 1.0]"),
    ("train_cam.momentum=1.0", "train_cam.momentum = 1.0: must be in [0.0, 1.0)"),
    ("run.workers=-1", "run.workers = -1: must be >= 0"),
    ("yolact.anchor_scales=[8, 16]", "yolact.anchor_scales = [8, 16]: must have 5 elements, has 2"),
    ("eval_ins_seg.iou_thresholds=[]", "eval_ins_seg.iou_thresholds = []: must not be empty"),
    ("run.image_hash=md5", "run.image_hash = 'md5': must be one of content, stat, off"),
])
def test_ranges_and_choices(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config("synthetic", overrides=[override])


def test_a_binary_config_file_is_one_line(tmp_path):
    f = tmp_path / "model.pth"
    f.write_bytes(b"\x80\x02\xff\xfe" * 100)
    with pytest.raises(ConfigError, match="model.pth: not a TOML file"):
        load_config("synthetic", f)


# ------------------------------------------------- keys that constrain each other (issue 29.5)

@pytest.mark.parametrize("overrides, message", [
    (["train_irn.crop_size=64", "train_irn.radius=10"],
     "train_irn.crop_size = 64 is too small for train_irn.radius = 10: IRNet trains on the crop's stride-4 grid, "
     "16x16 cells, and pairs up to 9 cells apart need 19 cells across; raise train_irn.crop_size to at least 73 "
     "or lower train_irn.radius to at most 8"),
    (["train_irn.radius=1"], "train_irn.radius = 1: must be in [2, 24]"),
    (["random_walk.radius=1"], "random_walk.radius = 1: must be in [2, 24]"),
    (["ir_label.fg_thres=0.2", "ir_label.bg_thres=0.3"], "ir_label.bg_thres = 0.3 is above ir_label.fg_thres = 0.2"),
    (["train_cam.crop_size=16", "train_cam.batch_size=1"],
     "train_cam.crop_size = 16 with train_cam.batch_size = 1: the backbone's last feature map (output stride 16) is "
     "1x1"),
    (["seg.input_size=32", "seg.batch_size=1"], "seg.input_size = 32 with seg.batch_size = 1"),
])
def test_keys_that_constrain_each_other_are_checked_together(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config("synthetic", overrides=overrides)
    assert message in str(e.value)


@pytest.mark.parametrize("overrides", [
    ["train_irn.crop_size=73", "train_irn.radius=10"],     # the smallest crop for radius 10
    ["train_irn.crop_size=64", "train_irn.radius=8"],      # the largest radius for crop 64
    ["train_cam.crop_size=17", "train_cam.batch_size=1"],  # a 2x2 map: BatchNorm has 4 values per channel
    ["train_cam.crop_size=16", "train_cam.batch_size=2"],
])
def test_the_edges_of_those_constraints_pass(overrides):
    load_config("synthetic", overrides=overrides)


@pytest.mark.parametrize("radius", [2, 5, 10])
def test_the_crop_rule_is_the_loss_grid(radius):
    """The schema's smallest crop is exactly where IRNet's pair maxima have sources: its grid
    works, a grid one cell smaller fails as train_irn would."""
    import torch
    from wsis.algorithms.affinity import path_max
    from wsis.schema import IRN_GRID_STRIDE, irn_min_crop
    cells = -(-irn_min_crop(radius) // IRN_GRID_STRIDE)
    path_max(torch.rand(1, cells, cells), radius)
    assert -(-(irn_min_crop(radius) - 1) // IRN_GRID_STRIDE) == cells - 1
    with pytest.raises(ValueError, match="too small for radius"):
        path_max(torch.rand(1, cells - 1, cells - 1), radius)


def test_a_crop_too_small_for_the_radius_stops_the_run_before_anything_runs(tiny_data, tmp_path):
    """Before, train_cam, make_cam and ir_label ran, then train_irn failed with a traceback."""
    from conftest import tiny_args, wsis
    from test_faults import one_line_error
    work = tmp_path / "work"
    proc = wsis("run", "--stage", "train_irn", *tiny_args(tiny_data, work), "--set", "train_irn.crop_size=64",
                "--set", "train_irn.radius=10", check=False)
    one_line_error(proc, "train_irn.crop_size = 64 is too small for train_irn.radius = 10")
    assert not work.exists()
