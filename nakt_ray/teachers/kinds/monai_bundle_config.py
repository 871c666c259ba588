"""Reading a MONAI bundle's inference config for a teacher (``kinds/monai_bundle.py``): only the parts a teacher
needs (``network_def``, ``preprocessing``, ``inferer`` and the entries they reference) are parsed and built, by
``monai.bundle.ConfigParser``, after they are checked for code.

Why the check: a bundle config instantiates whatever its ``_target_`` names and evaluates its ``$`` expressions with
``eval``, so a bundle from another site could run anything in the driver and every teacher actor. Without the
teacher's ``trust_pickle: true`` (README, "Untrusted models") the parts may only name ``_target_`` s defined in MONAI
outside :data:`CODE_RUNNING_MODULES`, and hold expressions of literals, ``@`` references, arithmetic and indexing (no
name, attribute, call or import). The preprocessing's file reading and geometry transforms are dropped before it is
built (:func:`left_to_run`): the run reads every case and puts it on its own grid (decision 61).
"""
from __future__ import annotations

import ast
import copy
import warnings
from collections.abc import Iterator
from typing import Any

from nakt_ray.errors import TeacherLoadError, error

__all__ = ["CODE_RUNNING_MODULES", "build_parts", "left_to_run", "short_name", "walk"]

# MONAI modules whose callables load or run other code (bundles, dotted-path imports, downloads, subprocesses):
# a _target_ in them is code of the bundle's choosing, so it needs trust like any non-MONAI target.
CODE_RUNNING_MODULES = ("monai.bundle", "monai.utils.module", "monai.apps", "monai.auto3dseg", "monai.fl")
# Preprocessing the run does itself (it reads every case and puts it on its one grid): never run inside the teacher.
_RUN_GRID_MODULES = ("monai.transforms.io.", "monai.transforms.spatial.", "monai.transforms.croppad.")
_RUN_GRID_NAMES = ("EnsureChannelFirst", "EnsureChannelFirstd", "AsChannelFirst", "AsChannelFirstd", "AddChannel",
                   "AddChanneld")
_SAFE_EXPRESSION_NODES = (ast.Expression, ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.Set, ast.BinOp,
                          ast.UnaryOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.USub,
                          ast.UAdd, ast.Subscript, ast.Slice, ast.Name, ast.Load)
_REF = "__ref__"  # what an ``@id`` in an expression is replaced by before it is checked




def _closure(config: dict[str, Any], ids: list[str]) -> set[str]:
    """The top-level entries ``ids`` need: themselves and every entry their ``@`` references reach."""
    from monai.bundle.reference_resolver import ReferenceResolver
    from monai.bundle.utils import ID_SEP_KEY

    seen: set[str] = set()
    todo = list(ids)
    while todo:
        key = todo.pop()
        if key in seen or key not in config:
            continue
        seen.add(key)
        for ref in ReferenceResolver.find_refs_in_config(config[key], key):
            todo.append(ReferenceResolver.normalize_id(ref).split(ID_SEP_KEY)[0])
    return seen


def walk(node: Any, at: str) -> Iterator[tuple[str, Any]]:
    """Every value under ``node`` with its config id."""
    yield at, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield from walk(v, f"{at}::{k}")


def _full_name(node: dict[str, Any], locator: Any) -> str:
    """The dotted path MONAI resolves a ``_target_`` to (``UNet`` -> ``monai.networks.nets.unet.UNet``)."""
    from monai.bundle import ConfigComponent

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # several components of one name: MONAI takes the first, as we do
        return str(ConfigComponent(node, locator=locator).resolve_module_name())


def _target(node: dict[str, Any], locator: Any) -> Any:
    """The object a ``_target_`` names (imported by its dotted path)."""
    from monai.utils.module import locate

    return locate(_full_name(node, locator))


def _plain_expression(expr: str) -> bool:
    """Whether a ``$`` expression is only literals, ``@`` references, arithmetic and indexing (no call, name,
    attribute or import): evaluating it runs no code of the bundle's choosing."""
    from monai.bundle.reference_resolver import ReferenceResolver

    text = ReferenceResolver.id_matcher.sub(_REF, ReferenceResolver.normalize_id(expr[1:]))
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:  # an import statement, or not Python
        return False
    return all(isinstance(n, _SAFE_EXPRESSION_NODES) and (not isinstance(n, ast.Name) or n.id == _REF)
               for n in ast.walk(tree))


def _target_problem(node: dict[str, Any], locator: Any) -> str:
    """Why building this ``_target_`` would run code outside MONAI ("" when it would not)."""
    target = node["_target_"]
    if not isinstance(target, str) or target.startswith(("$", "@", "%")):
        return f"_target_ {target!r} is not a plain name"
    if node.get("_mode_") == "debug":
        return "_mode_ 'debug' (runs pdb)"
    full, module = _full_name(node, locator), ""
    if full.startswith("monai."):  # importing inside MONAI runs only MONAI's code
        try:
            module = getattr(_target(node, locator), "__module__", "") or ""
        except Exception:  # noqa: BLE001 - MONAI cannot import it: building it fails with the reason
            module = ""
    return "" if module.startswith("monai.") and not module.startswith(CODE_RUNNING_MODULES) else \
        f"_target_ {target!r} ({module or full})"


def _code_in(parts: dict[str, Any], locator: Any) -> list[str]:
    """What in ``parts`` (config entries) would run code outside MONAI: one line per ``_target_`` or expression."""
    found = []
    for key, value in parts.items():
        for at, node in walk(value, key):
            if isinstance(node, str) and node.startswith("$") and not _plain_expression(node):
                found.append(f"{at}: expression {node!r}")
            elif isinstance(node, dict) and "_target_" in node and (why := _target_problem(node, locator)):
                found.append(f"{at}: {why}")
    return found


def left_to_run(cls: Any) -> bool:
    """Whether a transform class is file reading or geometry, which the run does itself."""
    module = f"{getattr(cls, '__module__', '')}."
    return module.startswith(_RUN_GRID_MODULES) or getattr(cls, "__name__", "") in _RUN_GRID_NAMES


def short_name(target: Any) -> str:
    return str(target).rsplit(".", 1)[-1]


def _geometry(pre: Any) -> dict[str, Any]:
    """What the bundle's preprocessing config says about geometry: its LoadImage reader and reverse_indexing, the
    Spacing pixdim and Orientation axcodes (only where written as literals)."""
    found: dict[str, Any] = {}
    for _, node in walk(pre, "preprocessing"):
        if not (isinstance(node, dict) and isinstance(node.get("_target_"), str)):
            continue
        name = short_name(node["_target_"]).rstrip("d")
        if name == "LoadImage":
            reader = node.get("reader")
            reader = reader.get("_target_") if isinstance(reader, dict) else reader
            found.update(reader=short_name(reader) if isinstance(reader, str) else None,
                         reverse_indexing=node.get("reverse_indexing"))
        elif name == "Spacing" and isinstance(node.get("pixdim"), list):
            found["pixdim"] = node["pixdim"]
        elif name == "Orientation" and isinstance(node.get("axcodes"), str):
            found["axcodes"] = node["axcodes"]
    return found


def _drop_run_transforms(pre: Any, locator: Any) -> tuple[Any, list[str]]:
    """``pre`` (a preprocessing config) without the transforms the run does itself, where it is a Compose of a
    literal list (so they are never built: a reader may not even be installed here), and their names."""
    from monai.transforms import Compose

    if not (isinstance(pre, dict) and isinstance(pre.get("transforms"), list) and "_target_" in pre):
        return pre, []
    try:
        if not (isinstance(cls := _target(pre, locator), type) and issubclass(cls, Compose)):
            return pre, []
    except Exception:  # noqa: BLE001 - building it will fail with the reason
        return pre, []
    kept, left = [], []
    for item in pre["transforms"]:
        try:
            drop = isinstance(item, dict) and "_target_" in item and left_to_run(_target(item, locator))
        except Exception:  # noqa: BLE001 - building it will fail with the reason
            drop = False
        (left.append(short_name(item["_target_"])) if drop else kept.append(item))
    return {**pre, "transforms": kept}, left


def build_parts(where: str, cfg_path: str, config: dict[str, Any], meta: dict[str, Any], ids: list[str],
                trust: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build ``ids`` (of network_def, preprocessing, inferer) from the bundle's inference ``config`` (read from
    ``cfg_path``; ``meta`` is its metadata, referable as ``@_meta_``), after checking them for code (``trust``: the
    teacher's ``trust_pickle``). Returns the built objects and what was learnt on the way: ``left`` (transforms left
    to the run), ``geometry`` (:func:`_geometry`), ``trusted_code`` (what needed trust).

    Raises:
        TeacherLoadError: code outside MONAI without ``trust``, a bad macro, a part that cannot be built; the message
            starts with ``where`` and names ``cfg_path``.
    """
    from monai.bundle import ConfigParser

    full = ConfigParser({**config, "_meta_": meta})
    try:
        full.resolve_macro_and_relative_ids()  # '%' macros and relative '@##' ids; reads, runs nothing
    except Exception as err:  # noqa: BLE001 - MONAI raises many types for a bad macro
        raise error(TeacherLoadError, where, f"{cfg_path!r}: {type(err).__name__}: {err}") from None
    resolved = full.get()
    parts = {k: copy.deepcopy(resolved[k]) for k in _closure(resolved, ids)}
    code = _code_in(parts, full.locator)
    if code and not trust:
        shown = "; ".join(code[:6]) + (f"; and {len(code) - 6} more" if len(code) > 6 else "")
        raise error(TeacherLoadError, where,
                    f"{cfg_path!r} runs code outside MONAI ({shown}). A bundle config instantiates whatever its "
                    "_target_ names and evaluates its $ expressions, so such a bundle is refused unless the teacher "
                    "says trust_pickle: true (README, \"Untrusted models\")")
    if code:
        warnings.warn(f"{where}: building the bundle's {', '.join(ids)} runs code outside MONAI because the "
                      f"teacher says trust_pickle: true: {'; '.join(code)}", UserWarning, stacklevel=4)
    learnt: dict[str, Any] = {"left": [], "geometry": _geometry(parts.get("preprocessing")), "trusted_code": code}
    if "preprocessing" in parts:
        parts["preprocessing"], learnt["left"] = _drop_run_transforms(parts["preprocessing"], full.locator)
    parser = ConfigParser(parts)
    built = {}
    for key in ids:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # MONAI's own deprecation notes, not the user's
                built[key] = parser.get_parsed_content(key)
        except Exception as err:  # noqa: BLE001 - whatever the bundle's classes raise
            raise error(TeacherLoadError, where, f"{cfg_path!r}: '{key}' cannot be built: {type(err).__name__}: "
                                                 f"{err}") from None
    return built, learnt
