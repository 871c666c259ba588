from __future__ import annotations

import pytest
import yaml

from nakt_ray import config
from nakt_ray.config import ConfigError

BASE = {"teachers": [{"name": "a", "arch": "unet"}, {"name": "b", "arch": "segresnet"}]}


def with_(**changes):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    for path, value in changes.items():
        node = raw
        *parents, last = path.split("__")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return raw


def test_defaults_are_valid_and_typed():
    cfg = config.from_dict(BASE)
    assert cfg.preprocess.size == (128, 128)
    assert [t.name for t in cfg.teachers] == ["a", "b"]
    assert cfg.data.num_classes == 2
    assert cfg.teacher_checkpoint(cfg.teachers[0]).as_posix().endswith("runs/nakt/teachers/a/model.pt")


# (raw config, fragments the error message must contain)
BAD = [
    ({**BASE, "trainig": {}}, ["unknown config key 'trainig'", "did you mean 'training'"]),
    (with_(training={"epohcs": 3}), ["'training.epohcs'", "did you mean 'epochs'"]),
    (with_(teachers__1__arhc="unet"), ["'teachers[1].arhc'", "did you mean 'arch'"]),
    (with_(training={"epochs": 0}), ["'training.epochs'", "got 0", ">= 1"]),
    (with_(training={"epochs": "ten"}), ["'training.epochs'", "'ten'", "an integer"]),
    (with_(teacher_training={"min_steps": -1}), ["'teacher_training.min_steps'", "got -1", ">= 0"]),
    (with_(training={"lr": True}), ["'training.lr'", "a number"]),
    (with_(preprocess={"mode": "stretch"}), ["'preprocess.mode'", "'stretch'", "'resize'", "'letterbox'"]),
    (with_(preprocess={"size": [128]}), ["'preprocess.size'", "a list of 2 values"]),
    (with_(preprocess={"in_channels": 2}), ["'preprocess.in_channels'", "one of 1, 3"]),
    (with_(teachers__0__arch="unet2"), ["'teachers[0].arch'", "did you mean 'unet'", "segresnet"]),
    (with_(teachers__0__arch_args={"chanels": [8, 16]}), ["teachers[0].arch_args", "chanels"]),
    (with_(teachers__1__name="a"), ["'teachers'", "unique", "repeated: a"]),
    (with_(fusion={"rule": "median"}), ["'fusion.rule'", "'mean'", "'staple'"]),
    (with_(fusion={"rule": "weighted_mean", "weights": [1.0]}), ["'fusion.weights'", "2 weights", "a, b"]),
    (with_(fusion={"rule": "weighted_mean"}), ["'fusion.weights'", "weighted_mean"]),
    (with_(data={"labels": ["background"]}), ["'data.labels'", "at least two"]),
    (with_(data={"labels": ["bg", "fg"], "mask_values": [0]}), ["'data.mask_values'", "2 distinct"]),
    (with_(tracking={"alias": "1st"}), ["'tracking.alias'", "not starting with a digit"]),
    ({"run_dir": "x"}, ["'teachers' is required"]),
    (["not", "a", "mapping"], ["expected a mapping"]),
]


@pytest.mark.parametrize("raw, fragments", BAD)
def test_bad_config_is_rejected_with_key_value_and_allowed(raw, fragments):
    with pytest.raises(ConfigError) as err:
        config.from_dict(raw)
    for fragment in fragments:
        assert fragment in str(err.value), f"{fragment!r} not in {err.value}"


def test_a_section_that_names_some_keys_keeps_its_own_defaults_for_the_others():
    # training and finetune are TrainingConfigs whose defaults differ from the class's (decision 74; finetune's lr)
    plain = config.TrainingConfig()
    full = config.from_dict(BASE)
    assert (full.training.min_steps, full.teacher_training.min_steps, plain.min_steps) == (550, 0, 0)
    assert (full.finetune.lr, full.finetune.epochs) == (5e-4, 10) and plain.lr == 2e-3
    part = config.from_dict({**BASE, "training": {"epochs": 3}, "finetune": {"epochs": 4},
                             "teacher_training": {"epochs": 5}})
    assert (part.training.epochs, part.training.min_steps) == (3, 550)
    assert (part.finetune.epochs, part.finetune.lr) == (4, 5e-4)
    assert (part.teacher_training.epochs, part.teacher_training.min_steps) == (5, 0)
    off = config.from_dict({**BASE, "training": {"min_steps": 0}})
    assert off.training.min_steps == 0 and off.training.epochs == plain.epochs
    assert config.from_dict(config.convert.to_plain(part)) == part  # a dumped config reads back the same
    with pytest.raises(ConfigError, match=r"'finetune\.lr'.*got 0"):
        config.from_dict({**BASE, "finetune": {"lr": 0}})


def test_load_names_the_file_and_overrides_are_validated(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**BASE, "training": {"epochs": 2}}))
    cfg = config.load(path, ["training.epochs=5", "teachers.1.actors=3", "run_dir=/tmp/x"])
    assert cfg.training.epochs == 5 and cfg.teachers[1].actors == 3 and cfg.run_dir == "/tmp/x"
    with pytest.raises(ConfigError, match=r"run\.yaml.*'training\.epochs'.*-1"):
        config.load(path, ["training.epochs=-1"])
    with pytest.raises(ConfigError, match="not a valid list index"):
        config.load(path, ["teachers.7.actors=1"])
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "missing.yaml")
    path.write_text("teachers: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(path)


def test_yaml_is_data_only(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("teachers: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(path)


def test_dump_and_load_round_trip(tmp_path):
    cfg = config.from_dict(with_(fusion={"rule": "weighted_mean", "weights": [2, 1]},
                                 teachers__0__arch_args={"channels": [8, 16, 32], "strides": [2, 2]}))
    again = config.load(config.dump(cfg, tmp_path / "c.yaml"))
    assert again == cfg
    assert again.fusion.weights == (2.0, 1.0)


def test_flatten_for_mlflow_params():
    flat = config.flatten(config.from_dict(BASE))
    assert flat["training.epochs"] == 10
    assert flat["teachers.1.arch"] == "segresnet"
    assert flat["preprocess.size"] == [128, 128]


def test_docs_key_table_is_current():
    from nakt_ray.config import docs as _docs

    assert _docs.DOC.read_text() == _docs.render(_docs.DOC.read_text()), (
        "docs/config.md's key table is out of date: run `.venv/bin/python -m nakt_ray.config.docs`")


@pytest.mark.parametrize("weights, shown", [
    ([float("nan"), 1.0], "nan"), ([1.0, float("inf")], "inf"), ([float("-inf"), 1.0], "-inf"),
    ([-0.5, 1.0], "-0.5"), ([0.0, 0.0], "[0.0, 0.0]"), ([0, -0.0], "[0.0, -0.0]"),
])
def test_fusion_weights_must_be_finite_non_negative_and_not_all_zero(weights, shown):
    with pytest.raises(ConfigError) as err:
        config.from_dict(with_(fusion={"rule": "weighted_mean", "weights": weights}))
    assert "'fusion.weights'" in str(err.value) and shown in str(err.value)
    assert "finite non-negative numbers, not all zero" in str(err.value)


def test_fusion_weights_from_yaml_nan_and_inf_are_refused_at_load(tmp_path):
    path = tmp_path / "run.yaml"
    for value in (".nan", ".inf"):
        path.write_text(yaml.safe_dump(BASE) + f"fusion: {{rule: weighted_mean, weights: [1.0, {value}]}}\n")
        with pytest.raises(ConfigError, match=r"run\.yaml.*'fusion\.weights'.*finite"):
            config.load(path)
    assert config.load(path, ["fusion.weights=[0, 2]"]).fusion.weights == (0.0, 2.0)  # one zero is fine


def test_label_aliases_are_accepted_and_round_trip(tmp_path):
    data = {"labels": ["background", "left ventricle", "myocardium"],
            "label_aliases": {"LV": "Left_Ventricle", "myo": "myocardium", "tumour": "background"}}
    cfg = config.from_dict(with_(data=data))
    assert cfg.data.label_aliases == data["label_aliases"]
    assert config.load(config.dump(cfg, tmp_path / "c.yaml")) == cfg
    assert config.from_dict(BASE).data.label_aliases == {}
    # an alias to the student's own first label, whatever its name, folds into background too
    assert config.from_dict(with_(data={"labels": ["bg", "lv"], "label_aliases": {"tumour": "BG"}}))


@pytest.mark.parametrize("data, fragments", [
    ({"labels": ["bg", "lv"], "label_aliases": {"heart": "atrium"}},
     ["'data.label_aliases.heart'", "got 'atrium'", "a student label ['bg', 'lv'] or 'background'"]),
    ({"labels": ["bg", "lv"], "label_aliases": {"heart": 3}}, ["'data.label_aliases.heart'", "got 3"]),
    ({"labels": ["bg", "left ventricle"], "label_aliases": {"Left_Ventricle": "left ventricle"}},
     ["'data.label_aliases.Left_Ventricle'", "is a student label itself"]),
    ({"labels": ["bg", "lv"], "label_aliases": {"left-v": "lv", "Left V": "lv"}},
     ["'data.label_aliases.Left V'", "the same alias as 'left-v'"]),
    ({"labels": ["bg", "Left_V", "left-v"]}, ["'data.labels'", "['bg', 'Left_V', 'left-v']", "differ in more than"]),
    ({"labels": ["bg", "left_ventricle", "Left Ventricle"]}, ["'data.labels'", "differ in more than case"]),
    ({"labels": ["none", "background", "liver"]}, ["'data.labels'", "'background' only as the first label"]),
])
def test_bad_label_aliases_and_labels_are_refused_naming_the_key(data, fragments):
    with pytest.raises(ConfigError) as err:
        config.from_dict(with_(data=data))
    for fragment in fragments:
        assert fragment in str(err.value), f"{fragment!r} not in {err.value}"
