"""The search-space language (nakt_ray/config/space.py): bad spaces refused at load time naming the key, and the
decoding of a trial's sampled parameters into config values and a trial config. No Ray: the searches themselves are
in tests/test_tune.py."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import TINY_UNET, tiny_raw_config

from nakt_ray import config
from nakt_ray.config import ConfigError


def _raw(tmp_path: Path, space: dict, **tune) -> dict:
    raw = tiny_raw_config(tmp_path, student={"name": "s", "arch": "unet", "arch_args": TINY_UNET})
    raw["tune"] = {"space": space, **tune}
    return raw


SPACE_ERRORS = [
    ({"training.lrr": {"uniform": [0.001, 0.01]}}, r"tune.space\[training.lrr\].*did you mean 'lr'"),
    ({"teachers.0.actors": {"choice": [1, 2]}}, r"tune.space\[teachers.0.actors\].*training\.\*"),
    ({"training.num_workers": {"choice": [0, 1]}}, r"tune.space\[training.num_workers\].*resources"),
    ({"training.lr": {"loguniform": [0, 0.01]}}, r"tune.space\[training.lr\].loguniform.*0 < low < high"),
    ({"training.lr": {"uniform": [0.01, 0.001]}}, r"tune.space\[training.lr\].uniform.*low < high"),
    ({"training.lr": {"normal": [0.01, 0.001]}}, r"did you mean .uniform.. one of choice, uniform"),
    ({"training.batch_size": {"randint": [2, 8.5]}}, r"two integers"),
    ({"student.arch": {"choice": []}}, r"non-empty list"),
    ({"training.lr": {"uniform": [0.001, 0.01]}, "training.kl_weight": {"uniform": [0, 1], "when": {"training.lr": 1}}},
     r"another, unconditional choice entry"),
    ({"fusion.weights": {"simplex": 3}}, r"simplex.*got 3; expected 2, the number of teachers"),
    ({"training.lr": {"simplex": 2}}, r"simplex only for fusion.weights"),
    # bounds checked through the trial config: lr must be < 1, temperature > 0
    ({"training.lr": {"uniform": [0.01, 2.0]}}, r"is not a valid config: config key 'training.lr'"),
    ({"training.temperature": {"uniform": [0.0, 4.0]}}, r"config key 'training.temperature'"),
    # an architecture's arguments must fit it: basic_unet has no 'channels'
    ({"student.arch": {"choice": ["unet", "basic_unet"]}, "student.arch_args.channels": {"choice": [[4, 8]]}},
     r"\"student.arch\": \"basic_unet\".*student.arch_args.*channels.*`when`"),
    # weights searched while the rule is always mean (no weights), and weighted_mean without any weights
    ({"fusion.weights": {"simplex": 2}}, r"rule 'mean' takes no weights"),
    ({"fusion.rule": {"choice": ["mean", "weighted_mean"]}}, r"config key 'fusion.weights'.*weighted_mean"),
]


@pytest.mark.parametrize("space, match", SPACE_ERRORS)
def test_bad_spaces_are_refused_at_load_time_naming_the_key(tmp_path, space, match):
    with pytest.raises(ConfigError, match=match):
        config.from_dict(_raw(tmp_path, space))


def test_trial_values_decode_choices_conditions_and_weights(tmp_path):
    from nakt_ray.config.space import parse_space, trial_config, trial_values

    space = {"student.arch": {"choice": ["unet", "basic_unet"]},
             "student.arch_args.channels": {"choice": [[4, 8], [8, 16]], "when": {"student.arch": "unet"}},
             "student.arch_args.strides": {"choice": [[2]], "when": {"student.arch": "unet"}},
             "fusion.rule": {"choice": ["mean", "weighted_mean", "staple"]},
             "fusion.weights": {"simplex": 2}, "training.batch_size": {"randint": [2, 4]}}
    cfg = config.from_dict(_raw(tmp_path, space))
    dists = parse_space(space)
    params = {"student.arch": "unet", "student.arch_args.channels": "[8, 16]", "student.arch_args.strides": "[2]",
              "fusion.rule": "weighted_mean", "fusion.weights[0]": math.exp(-1), "fusion.weights[1]": math.exp(-3),
              "training.batch_size": 4}
    values = trial_values(dists, params, cfg)
    assert values["student.arch_args.channels"] == [8, 16] and values["training.batch_size"] == 4
    assert values["fusion.weights"] == pytest.approx([0.25, 0.75])  # -log(u), normalised
    trial = trial_config(cfg, values)
    assert trial.fusion.weights == pytest.approx((0.25, 0.75)) and trial.student.arch_args["channels"] == [8, 16]
    # basic_unet: the unet-only arguments are not applied; mean: the sampled weights are dropped
    values = trial_values(dists, {**params, "student.arch": "basic_unet", "fusion.rule": "mean"}, cfg)
    assert "student.arch_args.channels" not in values and values["fusion.weights"] is None
    assert trial_config(cfg, values).student.arch == "basic_unet"


def test_per_teacher_weights_fill_from_the_base_weights(tmp_path):
    from nakt_ray.config.space import parse_space, trial_values

    space = {"fusion.weights.1": {"uniform": [0.0, 1.0]}}
    cfg = config.from_dict({**_raw(tmp_path, space), "fusion": {"rule": "weighted_mean", "weights": [2.0, 1.0]}})
    assert trial_values(parse_space(space), {"fusion.weights.1": 0.5}, cfg) == {"fusion.weights": [2.0, 0.5]}
    with pytest.raises(ConfigError, match="either as one simplex entry or per teacher"):
        parse_space({"fusion.weights": {"simplex": 2}, "fusion.weights.0": {"uniform": [0, 1]}})
