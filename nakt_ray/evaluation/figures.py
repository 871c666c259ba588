"""Pictures of volumes for people: orthogonal mid-slices (axial, coronal, sagittal) of a volume on its original grid,
and the evaluation's figure per model (image with the contours of ground truth, teachers' ensemble and the model).

Display convention, the same for every picture of nakt-ray: the volume is first put in RAS order (permutes and flips
only, ``data/volume_preprocess.orientation_for``; never an interpolation), so its axes ``(D, H, W)`` run towards
Superior, Anterior and Right. Then each plane is drawn with its first axis pointing up: axial (rows Anterior, columns
Right), coronal (rows Superior, columns Right), sagittal (rows Superior, columns Anterior). The patient's right is
on the viewer's right (the neurological convention). Planes are drawn in mm (anisotropic voxels keep their shape).

No Ray, no torch: used by ``evaluation/volumes.py`` (inside the scoring tasks: planes only) and by
``inference/predict_volumes.py`` (montages).
"""
from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nakt_ray.data.volume_preprocess import orientation_for
from nakt_ray.data.volumes import VolumeGeometry

PLANES = ("axial", "coronal", "sagittal")
# Contour colours of the evaluation figure: ground truth, teachers' ensemble, the model (one foreground class).
COLOURS = {"truth": "#00d25a", "ensemble": "#ffd700", "model": "#ff4000"}
# With two or more foreground classes the colour tells the class and the line style the source. Class k is
# CLASS_COLOURS[(k - 1) % 16], the same list as nakt_ray/inference/overlays.py's PALETTE (that module is a layer
# above this one; tests/test_overlays.py checks that the two agree).
CLASS_COLOURS = ("#ff4000", "#00a0ff", "#ffd700", "#00dc5a", "#dc00dc", "#00e6e6", "#ff80a0", "#9664ff",
                 "#aa6e28", "#008080", "#d2f53c", "#800000", "#0046c8", "#808000", "#aaffc3", "#dcbeff")
STYLES = {"truth": "solid", "ensemble": "dotted", "model": "dashed"}
# Cases pictured in each model's figure (the first ones by case_id).
FIGURE_CASES = 4


def to_display(array: np.ndarray, geometry: VolumeGeometry) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``array`` ``[D, H, W]`` on ``geometry`` -> ``(array in RAS order [S, A, R], its spacing (s, a, r) mm)``."""
    perm, flips = orientation_for(geometry, "RAS")
    out = np.transpose(array, perm)
    axes = tuple(b for b in range(3) if flips[b])
    out = np.flip(out, axes) if axes else out
    return out, tuple(float(geometry.spacing[a]) for a in perm)  # type: ignore[return-value]


def foreground_centre(mask: np.ndarray) -> tuple[int, int, int]:
    """The voxel nearest the centroid of ``mask > 0`` ``[D, H, W]``; the volume's centre when it has none."""
    where = np.argwhere(mask > 0)
    if len(where) == 0:
        return tuple(int(s) // 2 for s in mask.shape)  # type: ignore[return-value]
    return tuple(round(float(c)) for c in where.mean(0))  # type: ignore[return-value]


def mid_planes(array: np.ndarray, centre: Sequence[int]) -> dict[str, np.ndarray]:
    """The three planes of a display-ordered ``array`` ``[S, A, R]`` through ``centre``, each with its first axis
    pointing up (row 0 at the top of a picture): ``{plane: [rows, columns]}``, see the module docstring."""
    s, a, r = (int(c) for c in centre)
    return {"axial": np.flipud(array[s]), "coronal": np.flipud(array[:, a, :]),
            "sagittal": np.flipud(array[:, :, r])}


def plane_spacings(spacing: Sequence[float]) -> dict[str, tuple[float, float]]:
    """(row, column) mm of each plane of :func:`mid_planes` for a display spacing ``(s, a, r)``."""
    s, a, r = spacing
    return {"axial": (a, r), "coronal": (s, r), "sagittal": (s, a)}


def grey(image: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Intensities -> uint8 grey, stretched between the 1st and 99th percentiles of ``reference`` (default: the
    image): a few bright voxels (bone, contrast) do not wash out the rest."""
    ref = (image if reference is None else reference).ravel()
    ref = ref[::max(1, ref.size // 2**20)]  # a million voxels estimate the percentiles well enough to look at
    lo, hi = np.percentile(ref, [1, 99]) if ref.size else (0.0, 1.0)
    return np.clip(255 * (image.astype(np.float32) - lo) / max(float(hi - lo), 1e-6), 0, 255).astype(np.uint8)


class CasePlanes:
    """The mid-planes of one case through the centre of its ground truth's foreground, gathered one map at a time
    (a worker holds the planes, never every model's label map of the volume at once) and packed as ``.npz``
    bytes for a Ray row (a few KB; the figure is drawn in the driver, :func:`write_model_figures`).

    ``truth`` and every map added are ``[D, H, W]`` on ``geometry`` (the case's original grid).
    """

    def __init__(self, geometry: VolumeGeometry, truth: np.ndarray):
        self.geometry = geometry
        shown, spacing = to_display(truth, geometry)
        self.centre = foreground_centre(shown)
        self.arrays: dict[str, np.ndarray] = {"spacing": np.asarray(spacing)}
        self.add("truth", truth)

    def add(self, name: str, label: np.ndarray) -> None:
        """A label map's planes, under ``name`` (a model, ``truth``)."""
        for plane, values in mid_planes(to_display(label, self.geometry)[0], self.centre).items():
            self.arrays[f"label/{name}/{plane}"] = np.ascontiguousarray(values, dtype=np.uint8)

    def add_image(self, image: np.ndarray) -> None:
        """The image's planes as uint8 grey (stretched over the whole volume's intensities, :func:`grey`)."""
        for plane, values in mid_planes(to_display(grey(image), self.geometry)[0], self.centre).items():
            self.arrays[f"image/{plane}"] = np.ascontiguousarray(values)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(buf, **self.arrays)
        return buf.getvalue()


def _unpack(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data)) as z:
        return {k: z[k] for k in z.files}


def safe_name(name: str) -> str:
    """A model name as part of a file name (``NAME@ALIAS``, ``NAME/3`` keep their letters)."""
    return re.sub(r"[^\w.-]", "_", name)


def class_colour(cls: int) -> str:
    """The colour (``#rrggbb``) of foreground class ``cls`` >= 1 in every picture."""
    return CLASS_COLOURS[(int(cls) - 1) % len(CLASS_COLOURS)]


def _draw(ax: Any, planes: dict[str, np.ndarray], plane: str, spacing: tuple[float, float],
          contours: list[tuple[str, str | None, str]], num_classes: int) -> None:
    """The image with each source's contours; a source's colour None means: each class in its own colour."""
    image = planes[f"image/{plane}"]
    rows, cols = image.shape
    extent = (0.0, cols * spacing[1], 0.0, rows * spacing[0])  # mm; row 0 at the top
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, extent=extent, interpolation="nearest")
    x = (np.arange(cols) + 0.5) * spacing[1]
    y = extent[3] - (np.arange(rows) + 0.5) * spacing[0]
    for key, colour, style in contours:
        label = planes[f"label/{key}/{plane}"]
        for c in range(1, num_classes):
            region = (label == c).astype(np.float32)
            if region.any() and not region.all():
                ax.contour(x, y, region, levels=[0.5], colors=[colour or class_colour(c)], linewidths=1.0,
                           linestyles=style)
    ax.set_xticks([])
    ax.set_yticks([])


def write_model_figures(out_dir: str | Path, cases: list[tuple[str, bytes]], models: list[str],
                        ensemble: str | None, num_classes: int,
                        labels: Sequence[str] | None = None) -> dict[str, str]:
    """One PNG per model, ``evaluation_slices__<model>.png`` in ``out_dir``: a row per case of ``cases``
    (``(case_id, case_planes bytes)``), a column per plane, the image with the contours of the ground truth
    (green), the teachers' ensemble (yellow, dashed; when ``ensemble`` names it) and the model (red).
    With two or more foreground classes each class has its colour (:func:`class_colour`) and the source its line
    style (:data:`STYLES`: truth solid, ensemble dotted, model dashed); the legend names the classes by ``labels``
    (the class names, background first; ``class k`` without them). Returns ``{file name: path}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if labels is not None and len(labels) != num_classes:
        raise ValueError(f"labels names {len(labels)} classes ({list(labels)}) but num_classes is {num_classes}; "
                         "give one name per class, background first")
    by_class = num_classes > 2
    out = Path(out_dir)
    unpacked = [(case_id, _unpack(data)) for case_id, data in cases]
    files: dict[str, str] = {}
    for model in models:
        contours: list[tuple[str, str | None, str]] = [("truth", COLOURS["truth"], "solid")]
        if ensemble and model != ensemble:
            contours.append((ensemble, COLOURS["ensemble"], "dashed"))
        contours.append((model, COLOURS["model"], "solid"))
        if by_class:
            contours = [(key, None, STYLES["truth" if i == 0 else "model" if key == model else "ensemble"])
                        for i, (key, _, _) in enumerate(contours)]
        fig, axes = plt.subplots(len(unpacked), len(PLANES), figsize=(3.2 * len(PLANES), 3.2 * len(unpacked)),
                                 squeeze=False)
        for row, (case_id, planes) in enumerate(unpacked):
            spacings = plane_spacings(tuple(planes["spacing"]))
            for col, plane in enumerate(PLANES):
                _draw(axes[row, col], planes, plane, spacings[plane], contours, num_classes)
                axes[row, col].set_title(f"{case_id}: {plane}", fontsize=8)
        names = {"truth": "ground truth", ensemble or "": "teachers' ensemble", model: model}
        handles: list[Any] = [Line2D([], [], color=colour or "0.35", linestyle=style, label=names[key])
                              for key, colour, style in contours]
        if by_class:
            handles += [Patch(color=class_colour(c), label=labels[c] if labels is not None else f"class {c}")
                        for c in range(1, num_classes)]
        ncol = min(len(handles), 6)
        legend_rows = -(-len(handles) // ncol)
        fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
        # one legend row takes ~0.2 inch at the bottom of the figure
        fig.tight_layout(rect=(0, 0.04 if legend_rows == 1 else 0.2 * legend_rows / fig.get_figheight(), 1, 1))
        name = f"evaluation_slices__{safe_name(model)}.png"
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        files[name] = str(out / name)
    return files
