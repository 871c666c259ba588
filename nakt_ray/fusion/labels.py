"""Label spaces: which of the run's classes each teacher predicts, matched by name.

The run declares the student's labels (``data.labels``, background first): the *union*. Each teacher declares its
own output labels (its model file, description, MLflow tags, nnU-Net ``dataset.json`` or bundle metadata), also
background first. :func:`map_label_spaces` matches every teacher's labels to the union by name, through the run's
aliases (``data.label_aliases``: ``{alias: student label}``), and says, per teacher, which union classes it covers
and how its output channels fold onto them:

- a teacher's first label is its background, whatever its name: "none of my classes", never the union's
  background alone (``docs/fusion.md``);
- a teacher label matches the student label of the same name (case, ``_``, ``-`` and spaces ignored) or the one an
  alias names; an alias to ``background`` (or to the student's first label) folds that label into the teacher's
  background, explicitly dropping a class the student does not learn;
- several teacher labels onto one student class are summed (``left kidney`` and ``right kidney`` onto ``kidney``);
- a binary run (one student class) takes a binary teacher's one class as its own whatever its name (``head`` and
  ``foreground``): the only reading under which that teacher covers anything; the label map records it;
- a teacher label that matches nothing, a teacher that covers no student class, and a student class that no
  teacher covers are errors, all named in one message, before anything runs.

Pure Python and NumPy, no I/O: the annotation stage calls it on the loaded teachers and records the result in the
annotation set's manifest (``classes`` and ``label_map`` per teacher), which every later stage reads.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from nakt_ray.errors import ConfigError, error

__all__ = ["BACKGROUND", "LabelMap", "fold_channels", "map_label_spaces", "normalise_label"]

# The alias target that folds a teacher's label into its background.
BACKGROUND = "background"


def normalise_label(name: str) -> str:
    """The form labels are matched in: lower case, runs of spaces, ``_`` and ``-`` as one space, trimmed."""
    return " ".join(re.split(r"[\s_\-]+", str(name).strip().lower())).strip()


@dataclass(frozen=True)
class LabelMap:
    """How one teacher's output channels fold onto the union.

    ``classes``: the union classes of its stored channels, background (0) first, then the covered classes in union
    order; the stored map has ``len(classes)`` channels. ``cells``: for each of its own output channels, the index
    of the stored channel it adds to (0 = its background). ``label_map``: its label -> the student label it became
    (``background`` for folded ones), for the manifest and for people.
    """

    classes: tuple[int, ...]
    cells: tuple[int, ...]
    label_map: dict[str, str]

    @property
    def identity(self) -> bool:
        """True when the teacher's channels already are the union's, in order (nothing to fold)."""
        return self.cells == tuple(range(len(self.cells))) and len(self.cells) == len(self.classes)


def fold_channels(probs: np.ndarray, label_map: LabelMap, axis: int = -3) -> np.ndarray:
    """A teacher's probabilities over its own channels -> over its stored channels (``label_map.classes``): the
    channels that fold onto one stored channel are summed. ``probs`` has its classes on ``axis``."""
    channels = np.shape(probs)[axis]
    if channels != len(label_map.cells):  # checked on the fast path too: a wrong count must not pass unfolded
        raise ValueError(f"probs has {channels} channels on axis {axis}; the label map expects "
                         f"{len(label_map.cells)}")
    if label_map.identity:
        return probs
    arr = np.moveaxis(np.asarray(probs), axis, 0)
    out = np.zeros((len(label_map.classes), *arr.shape[1:]), dtype=arr.dtype)
    for channel, cell in enumerate(label_map.cells):
        out[cell] += arr[channel]
    return np.moveaxis(out, 0, axis)


def map_label_spaces(teachers: Mapping[str, Sequence[str]], student_labels: Sequence[str],
                     aliases: Mapping[str, str] | None = None, where: str = "config key 'data.labels'"
                     ) -> dict[str, LabelMap]:
    """Match each teacher's labels to the student's; returns ``{teacher: LabelMap}``.

    Args:
        teachers: ``{name: its labels, background first}``.
        student_labels: the run's labels (``data.labels``), background first.
        aliases: ``{alias: student label or "background"}`` (``data.label_aliases``).
        where: what the error message names as the place to fix.

    Raises ``ConfigError`` naming every teacher label that matches nothing, every teacher that covers no student
    class and every student class no teacher covers.
    """
    student = [normalise_label(s) for s in student_labels]
    index = {name: k for k, name in enumerate(student)}
    index[BACKGROUND] = 0
    alias_of = {normalise_label(a): normalise_label(t) for a, t in (aliases or {}).items()}
    maps: dict[str, LabelMap] = {}
    unmatched, empty = [], []
    covered: set[int] = set()
    binary = len(student) == 2
    for name, labels in teachers.items():
        targets = [0]  # its background is its background
        missing = []
        for label in list(labels)[1:]:
            key = normalise_label(label)
            key = alias_of.get(key, key)
            if key not in index and binary and len(labels) == 2:
                targets.append(1)  # one class against one class: the same structure by another name
            elif key not in index:
                missing.append(label)
                targets.append(0)
            else:
                targets.append(index[key])
        if missing:
            unmatched.append(f"teacher {name!r} labels {missing} (its labels: {list(labels)})")
            covered.update(targets)  # its matched labels still cover their classes: no false "uncovered" below
            continue
        classes = tuple(sorted(set(targets)))
        if classes == (0,):
            empty.append(f"teacher {name!r} (its labels {list(labels)} all fold into background)")
            continue
        covered.update(classes)
        position = {k: i for i, k in enumerate(classes)}
        maps[name] = LabelMap(classes=classes, cells=tuple(position[k] for k in targets),
                              label_map={str(label): (student_labels[k] if k else BACKGROUND)
                                         for label, k in zip(list(labels)[1:], targets[1:])})
    problems = []
    if unmatched:
        problems.append("these teacher labels match no student label: " + "; ".join(unmatched) +
                        " -- add them to data.labels, or map them in data.label_aliases "
                        "({their label: a student label}, or {their label: background} to drop the class)")
    if empty:
        problems.append("these teachers cover none of the student's classes: " + "; ".join(empty))
    # named together with unmatched labels (all problems in one message): a misspelt teacher label then shows
    # beside the student class it was meant for
    uncovered = [student_labels[k] for k in range(1, len(student)) if k not in covered]
    if uncovered:
        problems.append(f"student labels {uncovered} are predicted by no teacher (teachers' labels: " +
                        "; ".join(f"{n}: {list(ls)}" for n, ls in teachers.items()) +
                        ") -- remove them from data.labels or add a teacher that predicts them")
    if problems:
        raise error(ConfigError, where, f"the student's labels {list(student_labels)} and the teachers' labels do "
                                        "not fit: " + " | ".join(problems))
    return maps
