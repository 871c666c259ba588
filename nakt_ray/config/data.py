"""The ``data`` section of the run config: where the data lives and what its labels mean, and how teachers'
labels map onto them (``label_aliases``; matching itself is ``nakt_ray/fusion/labels.py``). Kept apart from
``schema.py`` as ``volume.py`` is."""
from __future__ import annotations

from dataclasses import dataclass, field

from nakt_ray.errors import ConfigError, error, expected


@dataclass(frozen=True)
class DataConfig:
    """Where the data lives and what the labels mean.

    Each path is a folder source: ``<path>/images/`` with an optional ``<path>/masks/`` whose files match the
    images by name (``mask_suffix`` is appended to the image's stem when looking up its mask). ``labels`` names the
    classes, background first. ``mask_values`` maps mask pixel values to classes (one value per label); when
    absent, binary masks map any non-zero pixel to class 1 and multi-class masks hold the class index.
    ``pseudonymize`` replaces every case id (file paths, often named after the patient) by a keyed hash wherever it
    leaves the input: Parquet, errors, evaluation tables, MLflow artifacts (``nakt_ray/data/privacy.py``); the key
    comes from the environment (``NAKT_PSEUDONYM_KEY`` or a file named by ``NAKT_PSEUDONYM_KEY_FILE``), never
    from this file.

    ``labels`` are the student's classes. Teachers may predict other label sets (each declares its own): their
    labels are matched to these by name (case, ``_``, ``-`` and spaces ignored), or through ``label_aliases``
    ``{teacher label: student label}``; an alias to ``background`` folds a teacher's class into its background.
    Each teacher then covers some of the student's classes (``nakt_ray/fusion/labels.py``, ``docs/fusion.md``);
    a teacher label that matches nothing, or a student class no teacher covers, stops the run before it starts.
    """

    labels: tuple[str, ...] = ("background", "foreground")
    mask_values: tuple[int, ...] | None = None
    mask_suffix: str = ""
    transferal: str | None = None
    val: str | None = None
    test: str | None = None
    finetune: str | None = None
    pseudonymize: bool = False
    label_aliases: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def _validate(self, p: str) -> None:
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise error(ConfigError, f"config key '{p}labels'",
                        expected(list(self.labels), "at least two distinct class names, background first"))
        if self.mask_values is not None:
            if len(self.mask_values) != len(self.labels) or len(set(self.mask_values)) != len(self.mask_values):
                raise error(ConfigError, f"config key '{p}mask_values'",
                            expected(list(self.mask_values),
                                     f"{len(self.labels)} distinct pixel values, one per label {list(self.labels)}"))
            if any(not 0 <= v <= 65535 for v in self.mask_values):
                raise error(ConfigError, f"config key '{p}mask_values'",
                            expected(list(self.mask_values), "pixel values between 0 and 65535"))
        self._validate_aliases(p)

    def _validate_aliases(self, p: str) -> None:
        from nakt_ray.fusion.labels import BACKGROUND, normalise_label

        student = {normalise_label(s) for s in self.labels}
        if any(normalise_label(s) == BACKGROUND for s in self.labels[1:]):
            raise error(ConfigError, f"config key '{p}labels'",
                        expected(list(self.labels), f"{BACKGROUND!r} only as the first label (class 0)"))
        if len(student) != len(self.labels):
            raise error(ConfigError, f"config key '{p}labels'",
                        expected(list(self.labels), "names that differ in more than case, '_', '-' and spaces"))
        seen: dict[str, str] = {}
        for alias, target in self.label_aliases.items():
            key = f"config key '{p}label_aliases.{alias}'"
            if not isinstance(target, str) or normalise_label(target) not in student | {BACKGROUND}:
                raise error(ConfigError, key, expected(target, f"a student label {list(self.labels)} or "
                                                               f"{BACKGROUND!r} (folds the teachers' class into "
                                                               "their background)"))
            if normalise_label(alias) in student:
                raise error(ConfigError, key, f"{alias!r} is a student label itself (data.labels); an alias names "
                                              "a teacher's label that differs from the student's")
            if normalise_label(alias) in seen:
                raise error(ConfigError, key, f"the same alias as {seen[normalise_label(alias)]!r} (case, '_', '-' "
                                              "and spaces are ignored)")
            seen[normalise_label(alias)] = alias
