"""The search-space language: what the config key ``tune.space`` may hold, and the trial config a sample stands for.

``tune.space`` maps dotted config keys to distributions (plain data, validated at load time). Every trial is the
base config with its sampled values set: a plain ``train-student`` config, with no search of its own. Entries
(``when`` is optional on any entry)::

    training.lr:                {loguniform: [1.0e-4, 1.0e-2]}
    training.kl_weight:         {uniform: [0.0, 1.0]}
    training.batch_size:        {randint: [4, 16]}            # both ends included
    student.arch:               {choice: [unet, basic_unet]}
    student.arch_args.channels: {choice: [[8, 16, 32], [16, 32, 64]], when: {student.arch: unet}}
    fusion.rule:                {choice: [weighted_mean, staple]}
    fusion.weights:             {simplex: 3}                  # one weight per teacher, summing to 1
    # or per teacher: fusion.weights.0: {uniform: [0, 1]}     (unsearched teachers keep the base weight, or 1)
    fusion.class_weights.0.2:   {uniform: [0, 1]}             # teacher 0's weight where it says label 2
    # (per-class weights: unsearched entries keep the base fusion.class_weights, or 1; rules mean and staple drop them)

Here: the syntax (:func:`parse_space`), the check that every trial the space can produce is a valid config
(:func:`check_trials`, run by ``from_dict``), and the decoding of a trial's sampled parameters into config values
(:func:`trial_values`, :func:`trial_config`). A parameter is a plain value: a choice that is not a scalar is JSON
text (``Dist.encoded_choices``), and a simplex is one uniform draw in (0, 1] per teacher. Turning the entries into
Ray Tune's distributions, and running the trials, is the search's (``nakt_ray/search/tune.py``); this module
imports no Ray.
"""
from __future__ import annotations

import difflib
import itertools
import json
import math
import random
from dataclasses import dataclass
from typing import Any

from nakt_ray.config.convert import build
from nakt_ray.config.overrides import field_type, set_values
from nakt_ray.config.schema import RunConfig
from nakt_ray.errors import ConfigError, error, expected

KINDS = ("choice", "uniform", "loguniform", "randint", "simplex")
SEARCHABLE = ("training.", "student.", "fusion.")
# Keys a trial cannot change: resources are the search's (tune.*), identity and data are the base config's.
FIXED = {"training.num_workers", "training.cpus_per_worker", "training.use_gpu", "training.torch_threads",
         "training.max_failures", "training.epochs", "student.name", "student.annotations", "student.init"}
RULES_WITHOUT_WEIGHTS = ("mean",)
RULES_WITHOUT_CLASS_WEIGHTS = ("mean", "staple")  # staple learns per-class reliability itself
MAX_CHECKED_TRIALS = 200  # trial configs built at load time to check the space (choice combinations x bounds)


@dataclass(frozen=True)
class Dist:
    """One entry of ``tune.space``: ``key`` (dotted config key), ``kind``, ``args`` (choices, bounds or the number
    of simplex weights) and ``when`` (choice key -> allowed values; the entry applies only where they hold)."""

    key: str
    kind: str
    args: tuple[Any, ...]
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    @property
    def params(self) -> list[str]:
        """The Tune parameter names this entry samples."""
        return [f"{self.key}[{i}]" for i in range(self.args[0])] if self.kind == "simplex" else [self.key]

    @property
    def encoded_choices(self) -> list[Any]:
        """Choices as Tune/Optuna see them: scalars as they are, anything else as JSON text."""
        if all(v is None or isinstance(v, (str, int, float, bool)) for v in self.args):
            return list(self.args)
        return [json.dumps(v) for v in self.args]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def same_value(a: Any, b: Any) -> bool:
    """Whether two plain values are the same as JSON (``[8, 16]`` and ``(8, 16)`` are; ``1`` and ``1.0`` are not):
    how choices, ``when`` values and a resumed search's space are compared."""
    return json.dumps(a) == json.dumps(b)


def parse_space(space: dict[str, Any], prefix: str = "tune.space") -> list[Dist]:
    """Check the syntax of a search space (kinds, bounds, ``when``) and return its entries. Raises ConfigError
    naming ``prefix[key]``. Whether the keys exist and every trial validates is :func:`check_trials`' job."""
    dists: list[Dist] = []
    for key, spec in space.items():
        where = f"{prefix}[{key}]"
        if not any(key.startswith(s) for s in SEARCHABLE):
            raise error(ConfigError, f"config key '{where}'", expected(
                key, f"a key under {', '.join(s + '*' for s in SEARCHABLE)} (a trial trains a student on the "
                     "stored annotations; teachers, data and resources are fixed)"))
        if key in FIXED or any(key.startswith(f + ".") for f in FIXED):
            raise error(ConfigError, f"config key '{where}'", expected(
                key, "a key a trial may change; resources are set by tune.* and the base config's "
                     "training.num_workers/cpus_per_worker, epochs by training.epochs (the ASHA budget)"))
        if not isinstance(spec, dict) or len([k for k in spec if k != "when"]) != 1:
            raise error(ConfigError, f"config key '{where}'", expected(
                spec, f"a mapping with one distribution, one of {', '.join(KINDS)} (plus optional when), "
                      "e.g. {loguniform: [1.0e-4, 1.0e-2]}"))
        kind = next(k for k in spec if k != "when")
        arg = spec[kind]
        if kind not in KINDS:
            close = difflib.get_close_matches(str(kind), KINDS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise error(ConfigError, f"config key '{where}'", expected(kind, f"{hint}one of {', '.join(KINDS)}"))
        if kind == "choice":
            if not isinstance(arg, list) or not arg:
                raise error(ConfigError, f"config key '{where}.choice'", expected(arg, "a non-empty list of values"))
            if len({json.dumps(v) for v in arg}) != len(arg):
                raise error(ConfigError, f"config key '{where}.choice'", expected(arg, "distinct values"))
            args = tuple(arg)
        elif kind == "simplex":
            if key != "fusion.weights":
                raise error(ConfigError, f"config key '{where}'", expected(
                    kind, "simplex only for fusion.weights (one weight per teacher, summing to 1)"))
            if isinstance(arg, bool) or not isinstance(arg, int) or arg < 2:
                raise error(ConfigError, f"config key '{where}.simplex'",
                            expected(arg, "the number of teachers (an integer >= 2)"))
            args = (arg,)
        else:
            if not isinstance(arg, list) or len(arg) != 2 or not all(_number(v) for v in arg):
                raise error(ConfigError, f"config key '{where}.{kind}'", expected(arg, "[low, high], two numbers"))
            low, high = arg
            if kind == "randint" and not all(isinstance(v, int) for v in arg):
                raise error(ConfigError, f"config key '{where}.randint'",
                            expected(arg, "[low, high], two integers (both included)"))
            if (low > high) if kind == "randint" else (low >= high):
                raise error(ConfigError, f"config key '{where}.{kind}'",
                            expected(arg, "low < high" if kind != "randint" else "low <= high"))
            if kind == "loguniform" and low <= 0:
                raise error(ConfigError, f"config key '{where}.loguniform'",
                            expected(arg, "0 < low < high (a log scale)"))
            args = (low, high)
        dists.append(Dist(key, kind, args, ()))
    by_key = {d.key: d for d in dists}
    out = []
    for d, (key, spec) in zip(dists, space.items()):
        when = spec.get("when") if isinstance(spec, dict) else None
        if when is None:
            out.append(d)
            continue
        where = f"{prefix}[{key}].when"
        if not isinstance(when, dict) or not when:
            raise error(ConfigError, f"config key '{where}'", expected(
                when, "a mapping of choice keys of this space to a value or a list of values"))
        conds = []
        for other, allowed in when.items():
            ref = by_key.get(other)
            if ref is None or ref.kind != "choice" or other == key or other in space and "when" in space[other]:
                raise error(ConfigError, f"config key '{where}'", expected(
                    other, "the key of another, unconditional choice entry of this space"))
            # one value, or a list of values (unless that list is itself one of the choices)
            allowed = allowed if isinstance(allowed, list) and not any(same_value(allowed, c) for c in ref.args) \
                else [allowed]
            bad = [a for a in allowed if not any(same_value(a, c) for c in ref.args)]
            if bad:
                raise error(ConfigError, f"config key '{where}.{other}'",
                            expected(bad, f"values among its choices {list(ref.args)}"))
            conds.append((other, tuple(allowed)))
        out.append(Dist(d.key, d.kind, d.args, tuple(conds)))
    weights = [d for d in out if d.key == "fusion.weights" or d.key.startswith("fusion.weights.")]
    if len({d.kind == "simplex" for d in weights}) > 1:
        raise error(ConfigError, f"config key '{prefix}[fusion.weights]'", expected(
            [d.key for d in weights],
            "fusion.weights either as one simplex entry or per teacher (fusion.weights.<index>), not both"))
    return out


def _decoded(d: Dist, value: Any) -> Any:
    return json.loads(value) if d.encoded_choices != list(d.args) else value


def trial_values(dists: list[Dist], params: dict[str, Any], base: RunConfig) -> dict[str, Any]:
    """The config values a trial's sampled Tune parameters stand for: ``{"dotted.key": value}``, in space order.

    Choices are decoded; an entry whose ``when`` does not hold is left out (the base value stays); a simplex
    ``fusion.weights`` is the normalised ``-log`` of its uniform draws (Dirichlet(1), uniform over the simplex);
    per-teacher weights fill a list from the base weights (or 1). A rule that takes no weights (``mean``) drops them.
    A trial with another architecture than the base config's starts from empty ``arch_args`` (the zoo defaults),
    since the base ones belong to the base architecture.
    """
    choices = {d.key: _decoded(d, params[d.key]) for d in dists if d.kind == "choice"}
    values: dict[str, Any] = {}
    weights: list[float] | None = None
    class_weights: list[list[float]] | None = None
    for d in dists:
        if any(not any(same_value(choices[k], a) for a in allowed) for k, allowed in d.when):
            continue
        if d.kind == "choice":
            values[d.key] = choices[d.key]
        elif d.kind == "simplex":
            raw = [-math.log(min(max(float(params[p]), 1e-12), 1.0)) + 1e-12 for p in d.params]
            weights = [w / sum(raw) for w in raw]
        elif d.key.startswith("fusion.weights."):
            weights = weights or (list(base.fusion.weights) if base.fusion.weights else [1.0] * len(base.teachers))
            index = int(d.key.rsplit(".", 1)[1])
            if index < len(weights):
                weights[index] = float(params[d.key])
        elif d.key.startswith("fusion.class_weights."):
            class_weights = class_weights or (
                [list(r) for r in base.fusion.class_weights] if base.fusion.class_weights
                else [[1.0] * len(base.data.labels) for _ in base.teachers])
            t, c = (int(i) for i in d.key.split(".")[2:4])
            if t < len(class_weights) and c < len(class_weights[t]):
                class_weights[t][c] = float(params[d.key])
        else:
            values[d.key] = int(params[d.key]) if d.kind == "randint" else float(params[d.key])
    if weights is not None:
        values["fusion.weights"] = weights
    if class_weights is not None:
        values["fusion.class_weights"] = class_weights
    if values.get("student.arch", base.student.arch) != base.student.arch and "student.arch_args" not in values:
        values = {"student.arch_args": {}, **values}  # the base arch_args belong to the base architecture
    if any(d.key.startswith("fusion.") for d in dists):
        rule = values.get("fusion.rule", base.fusion.rule)
        if rule in RULES_WITHOUT_WEIGHTS and "fusion.weights" in values:
            values["fusion.weights"] = None
        if rule in RULES_WITHOUT_CLASS_WEIGHTS and ("fusion.class_weights" in values or base.fusion.class_weights):
            values["fusion.class_weights"] = None
    return values


def trial_config(base: RunConfig, values: dict[str, Any]) -> RunConfig:
    """The base config with ``values`` set (a plain train-student config: no search of its own), validated; the
    student must also fit the input size."""
    from nakt_ray import zoo  # (lazily: the zoo imports torch)

    raw = base.to_dict()
    raw.pop("tune", None)
    # (built directly, not by from_dict: without a tune section there is no space to check)
    cfg = build(RunConfig, set_values(raw, values))
    try:
        zoo.check_spatial_size(cfg.student.arch, cfg.model_input_size, cfg.student.arch_args)
    except ValueError as err:
        raise error(ConfigError, "config key 'student.arch_args'", str(err)) from None
    return cfg


def _corner(dists: list[Dist], combo: tuple[int, ...], at: dict[str, str]) -> dict[str, Any]:
    """Tune parameters for one choice combination, numbers at their mid-point unless ``at`` says low/high."""
    params: dict[str, Any] = {}
    choice_dists = [d for d in dists if d.kind == "choice"]
    for d, i in zip(choice_dists, combo):
        params[d.key] = d.encoded_choices[i]
    for d in dists:
        if d.kind == "simplex":
            params.update({p: math.exp(-1) for p in d.params})  # equal weights
        elif d.kind in ("uniform", "loguniform", "randint"):
            low, high = d.args
            mid = (low + high) // 2 if d.kind == "randint" else (
                math.sqrt(low * high) if d.kind == "loguniform" else (low + high) / 2)
            params[d.key] = {"low": low, "high": high}.get(at.get(d.key, ""), mid)
    return params


def check_trials(cfg: RunConfig, prefix: str = "tune.space") -> None:
    """Refuse a space whose syntax is wrong, whose keys do not exist or which can produce an invalid trial config.

    Builds the trial config for every combination of choices (a seeded sample of ``MAX_CHECKED_TRIALS`` when there
    are more), with numbers at their mid-point and each number at its bounds; the first invalid one is reported
    with its values and the config error.
    """
    dists = parse_space(cfg.tune.space, prefix)
    n_teachers = len(cfg.teachers)
    for d in dists:
        try:
            field_type(d.key)
        except ConfigError as err:
            raise error(ConfigError, f"config key '{prefix}[{d.key}]'", f"not a config key: {err}") from None
        if d.kind == "simplex" and d.args[0] != n_teachers:
            raise error(ConfigError, f"config key '{prefix}[{d.key}].simplex'",
                        expected(d.args[0], f"{n_teachers}, the number of teachers"))
        if d.key.startswith("fusion.weights.") and int(d.key.rsplit(".", 1)[1]) >= n_teachers:
            raise error(ConfigError, f"config key '{prefix}[{d.key}]'",
                        expected(d.key, f"a teacher index below {n_teachers}"))
        if d.key.startswith("fusion.class_weights"):
            parts = d.key.split(".")[2:]
            n_labels = len(cfg.data.labels)
            if len(parts) != 2 or not all(x.isdigit() for x in parts) or int(parts[0]) >= n_teachers \
                    or int(parts[1]) >= n_labels or d.kind not in ("uniform", "loguniform"):
                raise error(ConfigError, f"config key '{prefix}[{d.key}]'", expected(
                    d.key, f"fusion.class_weights.<teacher index below {n_teachers}>.<label index below "
                           f"{n_labels}> with a uniform or loguniform distribution"))
    rule = next((d for d in dists if d.key == "fusion.rule"), None)
    rules = set(rule.args) if rule else {cfg.fusion.rule}
    if any(d.key.startswith("fusion.weights") for d in dists) and rules <= set(RULES_WITHOUT_WEIGHTS):
        raise error(ConfigError, f"config key '{prefix}[fusion.weights]'", expected(
            sorted(rules), "a fusion rule that uses weights (weighted_mean, majority_vote, staple, "
                           "confidence_weighted) in the base config or in the space: rule 'mean' takes no weights"))
    choice_dists = [d for d in dists if d.kind == "choice"]
    numeric = [d for d in dists if d.kind in ("uniform", "loguniform", "randint")]
    combos = list(itertools.islice(itertools.product(*[range(len(d.args)) for d in choice_dists]), 100_000))
    per_combo = 1 + 2 * len(numeric)
    if len(combos) * per_combo > MAX_CHECKED_TRIALS:
        combos = [combos[0]] + random.Random(0).sample(combos[1:], max(0, min(
            len(combos) - 1, MAX_CHECKED_TRIALS // per_combo - 1)))
    for combo in combos:
        for at in [{}] + [{d.key: end} for d in numeric for end in ("low", "high")]:
            values = trial_values(dists, _corner(dists, combo, at), cfg)
            try:
                trial_config(cfg, values)
            except ConfigError as err:
                hint = (" (limit the entry to some choices with `when`, or change its bounds)"
                        if choice_dists or numeric else "")
                raise error(ConfigError, f"config key '{prefix}'",
                            f"a trial with {json.dumps(values)} is not a valid config: {err}{hint}") from None
