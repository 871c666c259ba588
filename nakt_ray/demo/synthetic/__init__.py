"""Synthetic fetal-head ultrasound: the project's embedded default data, with known masks.

Each case mimics a 2D B-mode fetal-head image (the HC18 task): a bright elliptical skull ring with darker brain
inside, amniotic fluid around it, textured maternal tissue, multiplicative speckle, depth attenuation, a convex-probe
fan, acoustic shadows behind the skull, missing ring segments, and bright distractors (placenta, other ring-like
cross-sections, bone-like lines). An acquisition *site* is a :class:`SiteStyle`; the presets in :data:`SITES` differ
in intensity, noise, contrast and head-shape statistics, so teachers trained on one site are imperfect on the others.

Label maps hold class indices: 0 background, 1 fetal head (the filled ellipse inside the outer edge of the skull
ring), and with ``num_classes=3`` also 2, an inner fluid-filled structure (cavum / ventricles) drawn over class 1.
The image content does not depend on ``num_classes``: the same generator state gives the same image, only the label
map differs.

Example::

    rng = np.random.default_rng(0)
    image, label = generate_case(rng, SITES["site_a"])          # uint8 [H, W], uint8 [H, W]
    write_folder("data/site_a", 64, "site_a", seed=0)          # images/*.png + masks/*.png + synthetic.json
    write_folder("data/transferal", 64, "mixed", seed=1, size=(128, 128))

Takes in: a site (a preset name, ``"mixed"`` or a :class:`SiteStyle`), a seed and a case count. Gives out: uint8
image and label arrays ``[H, W]``, or a labeled folder (``images/``, ``masks/``, ``synthetic.json``). Imports
NumPy, SciPy and Pillow, nothing of the pipeline.

The parts: :mod:`.sites` (the site statistics and presets), :mod:`.shapes` (smooth random fields and ellipse
geometry), :mod:`.ultrasound` (probe, shadows, speckle, attenuation, compression), :mod:`.cases` (one case, layer
by layer) and :mod:`.folders` (dataset folders and their ``synthetic.json``).

3D volumes (CT- and MR-like, for ``nakt demo --3d`` and jobs/experiments/brain_mr.py): :mod:`.render` (the
generative image model: label map -> image, and resampling with the geometry), :mod:`.phantom` (a 3D body with
four target structures) and :mod:`.volumes` (3D sites and ``make_volume_folders``).
"""
from nakt_ray.demo.synthetic.cases import generate_case, generate_mixed_case
from nakt_ray.demo.synthetic.folders import IMAGE_FORMATS, write_folder
from nakt_ray.demo.synthetic.phantom import PHANTOM_LABELS, phantom_labels, phantom_mask
from nakt_ray.demo.synthetic.render import acquire, render_image, resample
from nakt_ray.demo.synthetic.sites import MIXED, NUM_CLASSES_SUPPORTED, SITES, SiteStyle, get_site
from nakt_ray.demo.synthetic.volumes import (
                                             HELD_OUT_SITE,
                                             TEACHER_SITES,
                                             VOLUME_SITES,
                                             VolumeSite,
                                             generate_volume,
                                             make_volume_folders,
)

__all__ = [
    "HELD_OUT_SITE",
    "IMAGE_FORMATS",
    "MIXED",
    "NUM_CLASSES_SUPPORTED",
    "PHANTOM_LABELS",
    "SITES",
    "TEACHER_SITES",
    "VOLUME_SITES",
    "SiteStyle",
    "VolumeSite",
    "acquire",
    "generate_case",
    "generate_mixed_case",
    "generate_volume",
    "get_site",
    "make_volume_folders",
    "phantom_labels",
    "phantom_mask",
    "render_image",
    "resample",
    "write_folder",
]
