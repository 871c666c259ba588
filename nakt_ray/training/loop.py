"""One training function for teachers and students: Ray Train (V2) ``TorchTrainer``, DDP over N workers.

Teachers learn from hard labels, students from fused soft labels; both arrive the same way, as a ``target``
column of uint8 probabilities ``[C, H, W]`` (one-hot x 255 for hard labels), so there is one loop. The loop
reads its shard of a Ray Dataset (``get_dataset_shard``), reports per-epoch metrics with a checkpoint holding a
self-describing model file, and logs metrics to MLflow from rank 0.

3D models run the same loop on patches ``[C, d, h, w]`` (``training/volume_data.py``): the losses take any number
of spatial axes, the augmentation is ``data/augment3d.py``, and validation predicts whole volumes by sliding window
(``training/volume_validation.py``). A model is 3D when its spec carries a ``volume`` preprocessing.
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nakt_ray.config import TrainingConfig, build
from nakt_ray.data.augment import Augmenter
from nakt_ray.losses import LOG_PARTS_EVERY
from nakt_ray.models.model_file import ModelSpec, cpu_state_dict, save_model
from nakt_ray.tracking import RunLogger

MODEL_FILE = "model.pt"  # the model after the checkpoint's epoch
BEST_FILE = "best_model.pt"  # the best model so far by validation Dice (when there is a validation set)
STATE_FILE = "train_state.pt"


def _targets(y: torch.Tensor) -> torch.Tensor:
    """Stored targets (uint8 x 255 or float16 probabilities) -> float distributions over classes."""
    y = y.float()
    return y / y.sum(1, keepdim=True).clamp_min(1e-6)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               tc: TrainingConfig, augmenter: Augmenter | None = None, amp_dtype: torch.dtype | None = None,
               scaler: torch.amp.GradScaler | None = None,
               per_teacher: dict[str, Any] | None = None, log_parts: bool = True) -> dict[str, float]:
    """One optimisation step on a batch (``image``, ``target``, optional ``weight``; on the model's device).

    With ``per_teacher`` (``{"coverage": [T][K+1] bools, "weights": [T] or None}``) the batch also holds
    ``teachers`` ``[B, T, K+1, *spatial]``, each teacher's stored map in the union layout, and the loss is
    :func:`~nakt_ray.losses.partial_label_loss` over them instead of the loss against ``target``.

    Shared by the Ray Train loop and the plain-PyTorch benchmark, so both do exactly the same work.
    Returns the loss parts as floats (without ``log_parts``, those of weight 0 are left out: not computed).
    """
    from nakt_ray.losses import partial_label_loss, segmentation_loss

    x, y = batch["image"].float(), _targets(batch["target"])
    w = batch["weight"].float() / 255 if "weight" in batch else None
    teachers = batch["teachers"].float() if per_teacher is not None else None
    if augmenter is not None:
        if teachers is not None:  # the teachers' maps move with the image, as the target does
            k = y.shape[1]
            x, both, w = augmenter(x, torch.cat([y, teachers.flatten(1, 2)], 1), w)
            y, teachers = both[:, :k], both[:, k:].reshape(teachers.shape)
        else:
            x, y, w = augmenter(x, y, w)
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = model(x)
    if teachers is not None:
        coverage = torch.as_tensor(per_teacher["coverage"], dtype=torch.bool)
        teachers = teachers / teachers.sum(2, keepdim=True).clamp_min(1e-6)
        targets = [teachers[:, t][:, coverage[t].to(teachers.device)] for t in range(teachers.shape[1])]
        parts = partial_label_loss(logits.float(), targets, coverage, per_teacher.get("weights"),
                                   dice_weight=tc.dice_weight, ce_weight=tc.ce_weight, kl_weight=tc.kl_weight,
                                   temperature=tc.temperature, hard_weight=tc.hard_weight, pixel_weight=w)
    else:
        parts = segmentation_loss(logits.float(), y, dice_weight=tc.dice_weight, ce_weight=tc.ce_weight,
                                  kl_weight=tc.kl_weight, temperature=tc.temperature, pixel_weight=w,
                                  hard_weight=tc.hard_weight, log_parts=log_parts)
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(parts["loss"]).backward()
        scaler.step(opt)
        scaler.update()
    else:
        parts["loss"].backward()
        opt.step()
    return {k: float(v.detach()) for k, v in parts.items()}


def train_metric(part: str) -> str:
    """The MLflow name of a loss part of ``losses.segmentation_loss``: ``train_loss`` for the total, else
    ``train_<part>_loss`` (``train_dice_loss`` is 1 - soft Dice, a loss; ``val_dice`` is the Dice score)."""
    return "train_loss" if part == "loss" else f"train_{part}_loss"


def validate(model: torch.nn.Module, batches: Any, num_classes: int, tc: TrainingConfig,
             amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Mean per-case ``val_dice``, ``val_iou`` (and ``val_hd95``, ``val_nsd`` if configured) over ``batches``."""
    from nakt_ray.metrics import case_scores

    model.eval()
    scores: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for batch in batches:
            x = batch["image"].float()
            with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                pred = model(x).argmax(1).cpu().numpy()
            label = batch["target"].argmax(1).cpu().numpy()
            for k, v in case_scores(pred, label, num_classes, tc.val_metrics, tc.nsd_tolerance).items():
                scores.setdefault(k, []).append(v)
    model.train()
    return {f"val_{k}": float(np.nanmean(np.concatenate(v))) if v else float("nan") for k, v in scores.items()}


def _restore(model: torch.nn.Module, opt: Any, sched: Any) -> tuple[int, dict[str, Any], Any]:
    """Load Ray Train's latest checkpoint, if any: ``(next epoch, state, best state dict)``."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0, {"best": -1.0, "best_epoch": -1}, None
    with ckpt.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
        model_state = torch.load(Path(d) / MODEL_FILE, map_location="cpu", weights_only=True)["state_dict"]
        best_state = None
        if (Path(d) / BEST_FILE).exists():
            best_state = torch.load(Path(d) / BEST_FILE, map_location="cpu", weights_only=True)["state_dict"]
    getattr(model, "module", model).load_state_dict(model_state)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return state["epoch"] + 1, state, best_state


def train_loop(config: dict[str, Any]) -> None:
    """The Ray Train worker function (also run in the driver when ``num_workers`` is 0)."""
    import ray
    import ray.train
    import ray.train.torch

    # 1. Typed config back from Ray's plain dict.
    spec = ModelSpec.from_dict(config["spec"])
    tc: TrainingConfig = build(TrainingConfig, config["training"], "training")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["torch_threads"])
    torch.manual_seed(tc.seed + rank)
    logger = RunLogger(**config["mlflow"]) if config.get("mlflow") and rank == 0 else None

    # 2. Model (from given initial weights, e.g. a distilled student to fine-tune), optimiser, schedule; then
    #    resume from the last checkpoint if Ray Train hands one over (a restarted worker group or a resumed run).
    device = ray.train.torch.get_device()
    net = spec.build()
    if config.get("init_state") is not None:
        net.load_state_dict(ray.get(config["init_state"]))
    model = ray.train.torch.prepare_model(net)
    bare = getattr(model, "module", model)  # rank-0-only work must bypass DDP (its forward is collective)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=tc.epochs, eta_min=tc.lr * 0.05)
    start_epoch, state, best_state = _restore(model, opt, sched)
    best, best_epoch = state["best"], state.get("best_epoch", -1)
    amp_dtype = None
    if device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    volumes = spec.volume is not None  # a 3D model: patches in, sliding-window validation on whole volumes
    augmenter = None
    if tc.augment:
        from nakt_ray.data.augment3d import VolumeAugmenter

        augmenter = (VolumeAugmenter if volumes else Augmenter)(tc.augment_strength,
                                                                seed=tc.seed + 1000 * rank + 7 * start_epoch)

    if logger is not None:
        # Every (re)start of the loop, and the epoch it starts from: a worker group restarted after a failure, or a
        # resumed run, shows here. A run interrupted before Ray Train recorded any checkpoint restarts from epoch 0,
        # so its epochs before the interruption appear twice in the metric history; this metric says why.
        logger.log_metrics({"start_epoch": start_epoch}, step=start_epoch)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if config["has_val"] else None
    passes = config.get("passes", 1)
    for epoch in range(start_epoch, tc.epochs):
        # 3. One pass over this worker's shard, or several on a small set (training.min_steps; every worker makes
        #    as many). A local shuffle buffer reshuffles rows every pass; its seed changes with the pass and rank,
        #    so a rerun with the same seed sees the same order (one pass an epoch: the seeds of before min_steps).
        #    data_wait_s is the time this worker waited for its input: the share of the epoch the step did not use.
        model.train()
        t0, sums, counts, steps, samples, wait = time.perf_counter(), {}, {}, 0, 0, 0.0
        batches = (batch for p in range(passes) for batch in train_shard.iter_torch_batches(
            batch_size=tc.batch_size, device=device, local_shuffle_buffer_size=config["shuffle_rows"],
            local_shuffle_seed=tc.seed + 1000 * (epoch * passes + p) + rank))
        while True:
            tw = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - tw
            if batch is None:
                break
            # the loss parts of weight 0 are logged from one step in LOG_PARTS_EVERY (their cost, losses.py)
            for k, v in train_step(model, opt, batch, tc, augmenter, amp_dtype, scaler, config.get("per_teacher"),
                                   log_parts=steps % LOG_PARTS_EVERY == 0).items():
                sums[k], counts[k] = sums.get(k, 0.0) + v, counts.get(k, 0) + 1
            steps, samples = steps + 1, samples + batch["image"].shape[0]
        sched.step()
        epoch_s = time.perf_counter() - t0
        metrics: dict[str, float] = {train_metric(k): v / counts[k] for k, v in sums.items()}
        metrics.update(epoch=epoch, lr=opt.param_groups[0]["lr"], epoch_s=epoch_s, data_wait_s=wait,
                       samples_per_s=samples * world / max(epoch_s, 1e-9), steps=steps, passes=passes)

        # 4. Validation on rank 0 (the val set is not split across workers); early stopping by patience.
        stop = False
        if val_shard is not None and rank == 0:
            if volumes:
                from nakt_ray.training.volume_validation import validate_volumes

                metrics.update(validate_volumes(bare, val_shard.iter_batches(batch_size=1, batch_format="numpy"),
                                                spec.labels, spec.input_size, device, tc.batch_size, amp_dtype))
            else:
                metrics.update(validate(bare, val_shard.iter_torch_batches(batch_size=tc.batch_size, device=device),
                                        spec.num_classes, tc, amp_dtype))
            if metrics["val_dice"] > best:
                best, best_epoch, best_state = metrics["val_dice"], epoch, cpu_state_dict(bare)
            metrics.update(best_val_dice=best, best_epoch=best_epoch)
            stop = tc.patience is not None and epoch - best_epoch >= tc.patience
        if world > 1:  # every worker must leave the loop together
            flag = torch.tensor([int(stop)], device=device)
            torch.distributed.broadcast(flag, src=0)
            stop = bool(flag.item())
        metrics["stopped_early"] = float(stop)

        # 5. Log to MLflow from rank 0, then report with a checkpoint (rank 0 writes it). Logging first means a
        # checkpointed epoch is always logged; an epoch logged but not checkpointed is redone (and logged again).
        if logger is not None:
            logger.log_metrics(metrics, step=epoch)
        # Ray Train copies a reported checkpoint to storage, except in local mode (num_workers=0), where the
        # checkpoint is the directory itself: then it is written straight into the run's storage folder.
        local_dir = config.get("local_checkpoint_dir")
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(local_dir) / f"checkpoint_epoch{epoch:04d}" if local_dir else Path(tmp)
            checkpoint = None
            if rank == 0:
                d.mkdir(parents=True, exist_ok=True)
                save_model(d / MODEL_FILE, bare, spec)
                if best_state is not None:
                    save_model(d / BEST_FILE, best_state, spec)
                torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch,
                            "best": best, "best_epoch": best_epoch}, d / STATE_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(str(d))
            ray.train.report(metrics, checkpoint=checkpoint)
        if local_dir:  # local mode: Ray Train keeps every reported directory; keep the last two, like num_to_keep
            shutil.rmtree(Path(local_dir) / f"checkpoint_epoch{epoch - 2:04d}", ignore_errors=True)
        for callback in config.get("local_callbacks") or ():  # local mode: Ray Train runs no callbacks itself
            callback.after_report(None, [metrics], checkpoint)
        if stop:
            break


def torch_threads(training: TrainingConfig) -> int:
    """Threads per worker: as configured, else the cluster's CPUs shared by the workers (at least 1).

    Ray's ``cpus_per_worker`` is a scheduling figure that is kept fractional on small machines; using it as the
    thread count would leave cores idle (one 0.5-CPU worker on a 2-core machine would use one core of two).
    """
    import ray

    if training.torch_threads:
        return training.torch_threads
    return max(1, int(ray.cluster_resources().get("CPU", 1) // max(1, training.num_workers)))


def steps_per_pass(training: TrainingConfig, rows: int) -> int:
    """Optimisation steps of one pass over a set of ``rows`` training rows (cases; 3D: cases x patches_per_case):
    Ray Train splits the set into equal shards of ``rows // workers`` rows (``streaming_split(equal=True)``), and a
    pass over a shard is that many rows in batches of ``batch_size``, the last one partial."""
    shard = max(1, rows // max(1, training.num_workers))
    return math.ceil(shard / training.batch_size)


def passes_per_epoch(training: TrainingConfig, rows: int | None) -> int:
    """How often an epoch goes over each worker's shard: 1, or on a small set the fewest passes that give
    ``training.min_steps`` optimisation steps in ``training.epochs`` epochs (``rows`` as :func:`steps_per_pass`;
    needed only when ``min_steps`` is set)."""
    if training.min_steps <= 0:
        return 1
    if rows is None or rows < 1:
        raise ValueError(f"training.min_steps is {training.min_steps}: the steps of an epoch need the number of "
                         f"training rows, got {rows!r}")
    return max(1, math.ceil(training.min_steps / (training.epochs * steps_per_pass(training, rows))))



def total_steps(training: TrainingConfig, rows: int) -> int:
    """The optimisation steps of a whole run on ``rows`` training rows: epochs x passes x steps of a pass."""
    return training.epochs * passes_per_epoch(training, rows) * steps_per_pass(training, rows)

# Rows a worker's shuffle buffer may hold when its dataset is held in memory (materialised): about this many bytes.
SHUFFLE_BYTES = 256 * 2**20


def shuffle_rows(ds: Any, batch_size: int, workers: int) -> int:
    """Shuffle-buffer rows per worker: a materialised dataset is reshuffled across up to ``SHUFFLE_BYTES`` of rows
    (the whole shard of a small set: a full reshuffle every epoch); a streaming one through 4 batches."""
    from ray.data.dataset import MaterializedDataset

    if not isinstance(ds, MaterializedDataset):
        return 4 * batch_size
    rows = max(1, ds.count())
    per_row = max(1, (ds.size_bytes() or 0) // rows)
    return int(max(4 * batch_size, min(-(-rows // workers), SHUFFLE_BYTES // per_row)))


def ingest_options():
    """Ray Data execution options for training input: Ray Train's defaults, in order.

    A seeded file shuffle and a seeded local shuffle buffer make an epoch's order reproducible only if blocks
    reach the trainer in the order they were read, not in the order their tasks finish (decision 34).
    """
    import ray.train

    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def new_run_name(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass(frozen=True)
class FitResult:
    model_path: Path
    metrics: dict[str, float]
    wall_s: float


def fit(spec: ModelSpec, train_ds: Any, training: TrainingConfig, *, out_path: str | Path, storage: str | Path,
        name: str, val_ds: Any = None, logger: RunLogger | None = None, run_name: str | None = None,
        init_state: dict[str, torch.Tensor] | None = None, callbacks: list[Any] | None = None,
        per_teacher: dict[str, Any] | None = None, rows: int | None = None) -> FitResult:
    """Train ``spec``'s model on ``train_ds`` with Ray Train and copy the chosen model file to ``out_path``.

    The chosen model is the best by validation Dice when ``val_ds`` is given, else the last epoch's. The last
    checkpoint carries both (``model.pt``, ``best_model.pt``), so only the latest checkpoints need keeping.

    ``storage`` is Ray Train's ``storage_path``: a path every node sees or an object-store URI (``s3://...``).
    ``run_name`` names the Ray Train run under ``storage`` (default: ``name`` plus a timestamp). Giving the name
    of an interrupted run resumes it from its latest checkpoint (Ray Train V2 restores runs by storage path and
    name). A worker that dies mid-run restarts the worker group from the latest checkpoint, up to
    ``training.max_failures`` times. ``init_state`` is a state dict the model starts from (fine-tuning).
    ``callbacks`` are Ray Train ``UserCallback`` objects (e.g. a search trial's epoch reporter, ``search/trials.py``);
    in local mode, where Ray Train runs none, the loop calls their ``after_report`` itself. ``per_teacher``: the
    student learns from each teacher's map (``train_step``), the rows of ``train_ds`` holding ``teachers``.
    ``rows``: the training rows of one pass over ``train_ds`` (cases; 3D: cases x patches_per_case), from which
    ``training.min_steps`` sets the passes of an epoch (:func:`passes_per_epoch`); needed when ``min_steps`` is set.
    """
    import shutil

    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from nakt_ray.runtime.cluster import cluster_has_gpus
    from nakt_ray.runtime.storage import absolute, is_uri

    passes = passes_per_epoch(training, rows)  # (before anything starts: a missing row count fails here)
    use_gpu = training.use_gpu if training.use_gpu is not None else cluster_has_gpus()
    resources = {"CPU": training.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    datasets = {"train": train_ds, **({"val": val_ds} if val_ds is not None else {})}
    run_name = run_name or new_run_name(name)
    local_dir = local_root = None
    if training.num_workers == 0:
        # Local mode trains in the driver and Ray Train ignores storage_path: the checkpoints are the folders the
        # loop writes, so they need a local place (for a URI storage, a temporary one removed at the end).
        local_root = tempfile.mkdtemp(prefix="nakt-train-") if is_uri(storage) else None
        local_dir = str(Path(local_root or Path(storage).resolve()) / run_name / "local")
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec.to_dict(), "training": asdict(training), "has_val": val_ds is not None,
                           "torch_threads": torch_threads(training),
                           "shuffle_rows": shuffle_rows(train_ds, training.batch_size, max(1, training.num_workers)),
                           "mlflow": asdict(logger) if logger else None, "local_checkpoint_dir": local_dir,
                           "local_callbacks": callbacks if training.num_workers == 0 else None,
                           "init_state": ray.put(init_state) if init_state is not None else None,
                           "per_teacher": per_teacher, "passes": passes},
        scaling_config=ray.train.ScalingConfig(num_workers=training.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=absolute(storage),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=training.max_failures),
            callbacks=callbacks if training.num_workers > 0 else None,
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"], execution_options=ingest_options()),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - t0
    if result.error:
        raise RuntimeError(f"training {name!r} failed: {result.error}")
    metrics = dict(result.metrics or {})
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as d:
        best = Path(d) / BEST_FILE
        shutil.copyfile(best if best.exists() else Path(d) / MODEL_FILE, out_path)
    if local_root is not None:
        shutil.rmtree(local_root, ignore_errors=True)
    return FitResult(out_path, {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.floating))},
                     wall)
