"""One training function for teachers and students: Ray Train (V2) ``TorchTrainer``, DDP over N workers.

Teachers learn from hard labels, students from fused soft labels; both arrive the same way, as a ``target``
column of uint8 probabilities ``[C, H, W]`` (one-hot x 255 for hard labels), so there is one loop. The loop
reads its shard of a Ray Dataset (``get_dataset_shard``), reports per-epoch metrics with a checkpoint holding a
self-describing model file, and logs metrics to MLflow from rank 0.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nakt_ray.checkpoint import ModelSpec, cpu_state_dict, save_model
from nakt_ray.config import TrainingConfig, build
from nakt_ray.tracking import RunLogger

MODEL_FILE = "model.pt"  # the model after the checkpoint's epoch
BEST_FILE = "best_model.pt"  # the best model so far by validation Dice (when there is a validation set)
STATE_FILE = "train_state.pt"


def augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random left-right flip (image and target alike) and intensity scale/shift (image only).

    Args:
        x: images ``[B, C_in, H, W]``; y: targets ``[B, C, H, W]``.
    """
    b = x.shape[0]
    flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)[:, None, None, None]
    x = torch.where(flip, x.flip(-1), x)
    y = torch.where(flip, y.flip(-1), y)
    scale = (1 + 0.2 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)).to(x.device)
    shift = (0.2 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)).to(x.device)
    return x * scale + shift, y


def foreground_dice(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-case mean foreground Dice of label maps ``[B, H, W]`` -> ``[B]`` (both empty counts as 1)."""
    scores = []
    for c in range(1, num_classes):
        p, t = pred == c, label == c
        inter = (p & t).sum((-2, -1)).float()
        denom = (p.sum((-2, -1)) + t.sum((-2, -1))).float()
        scores.append(torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(denom)))
    return torch.stack(scores, 0).mean(0)


def _targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    y = batch["target"].float()
    return y / y.sum(1, keepdim=True).clamp_min(1e-6)


def train_loop(config: dict[str, Any]) -> None:
    """The Ray Train worker function (also run in the driver when ``num_workers`` is 0)."""
    import ray.train
    import ray.train.torch

    from nakt_ray.losses import segmentation_loss

    # 1. Typed config back from Ray's plain dict.
    spec = ModelSpec.from_dict(config["spec"])
    tc: TrainingConfig = build(TrainingConfig, config["training"], "training")
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.set_num_threads(config["torch_threads"])
    torch.manual_seed(tc.seed + rank)
    gen = torch.Generator().manual_seed(tc.seed + 1000 * rank)
    logger = RunLogger(**config["mlflow"]) if config.get("mlflow") and rank == 0 else None

    # 2. Model, optimiser, schedule; resume from the last checkpoint if Ray Train hands one over.
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(spec.build())
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=tc.epochs, eta_min=tc.lr * 0.05)
    start_epoch, best, best_state = 0, -1.0, None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
            model_state = torch.load(Path(d) / MODEL_FILE, map_location="cpu", weights_only=True)["state_dict"]
            if (Path(d) / BEST_FILE).exists():
                best_state = torch.load(Path(d) / BEST_FILE, map_location="cpu", weights_only=True)["state_dict"]
        getattr(model, "module", model).load_state_dict(model_state)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, best = state["epoch"] + 1, state["best"]
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if config["has_val"] else None
    for epoch in range(start_epoch, tc.epochs):
        # 3. One pass over this worker's shard.
        model.train()
        t0, sums, steps, samples = time.perf_counter(), {}, 0, 0
        for batch in train_shard.iter_torch_batches(batch_size=tc.batch_size, device=device, drop_last=False):
            x, y = batch["image"], _targets(batch)
            if tc.augment:
                x, y = augment(x, y, gen)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits = model(x)
            parts = segmentation_loss(logits.float(), y, dice_weight=tc.dice_weight, ce_weight=tc.ce_weight,
                                      kl_weight=tc.kl_weight, temperature=tc.temperature)
            opt.zero_grad(set_to_none=True)
            parts["loss"].backward()
            opt.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            steps, samples = steps + 1, samples + x.shape[0]
        sched.step()
        metrics: dict[str, float] = {f"train_{k}": v / max(steps, 1) for k, v in sums.items()}
        metrics.update(epoch=epoch, lr=opt.param_groups[0]["lr"],
                       samples_per_s=samples / max(time.perf_counter() - t0, 1e-9))

        # 4. Validation on rank 0 (the val set is not split across workers).
        if val_shard is not None and rank == 0:
            model.eval()
            dices = []
            with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                for batch in val_shard.iter_torch_batches(batch_size=tc.batch_size, device=device):
                    pred = model(batch["image"]).argmax(1)
                    dices.append(foreground_dice(pred, batch["target"].argmax(1), spec.num_classes).cpu())
            metrics["val_dice"] = float(torch.cat(dices).mean()) if dices else float("nan")
            if metrics["val_dice"] > best:
                best, best_state = metrics["val_dice"], cpu_state_dict(model)
            metrics["best_val_dice"] = best

        # 5. Report with a checkpoint (rank 0 writes it); log to MLflow from rank 0.
        # Ray Train copies a reported checkpoint to storage, except in local mode (num_workers=0), where the
        # checkpoint is the directory itself: then it is written straight into the run's storage folder.
        local_dir = config.get("local_checkpoint_dir")
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(local_dir) / f"checkpoint_epoch{epoch:04d}" if local_dir else Path(tmp)
            checkpoint = None
            if rank == 0:
                d.mkdir(parents=True, exist_ok=True)
                save_model(d / MODEL_FILE, model, spec)
                if best_state is not None:
                    save_model(d / BEST_FILE, best_state, spec)
                torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch,
                            "best": best}, d / STATE_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(str(d))
            ray.train.report(metrics, checkpoint=checkpoint)
        if logger is not None:
            logger.log_metrics(metrics, step=epoch)


def torch_threads(training: TrainingConfig) -> int:
    """Threads per worker: as configured, else the cluster's CPUs shared by the workers (at least 1).

    Ray's ``cpus_per_worker`` is a scheduling figure that is kept fractional on small machines; using it as the
    thread count would leave cores idle (one 0.5-CPU worker on a 2-core machine would use one core of two).
    """
    import ray

    if training.torch_threads:
        return training.torch_threads
    return max(1, int(ray.cluster_resources().get("CPU", 1) // max(1, training.num_workers)))


@dataclass(frozen=True)
class FitResult:
    model_path: Path
    metrics: dict[str, float]
    wall_s: float


def fit(spec: ModelSpec, train_ds: Any, training: TrainingConfig, *, out_path: str | Path, storage: str | Path,
        name: str, val_ds: Any = None, logger: RunLogger | None = None) -> FitResult:
    """Train ``spec``'s model on ``train_ds`` with Ray Train and copy the chosen model file to ``out_path``.

    The chosen model is the best by validation Dice when ``val_ds`` is given, else the last epoch's. The last
    checkpoint carries both (``model.pt``, ``best_model.pt``), so only the latest checkpoints need keeping.
    """
    import shutil

    import ray.train
    from ray.train.torch import TorchTrainer

    from nakt_ray.runtime import cluster_has_gpus

    use_gpu = training.use_gpu if training.use_gpu is not None else cluster_has_gpus()
    resources = {"CPU": training.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    datasets = {"train": train_ds, **({"val": val_ds} if val_ds is not None else {})}
    run_name = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    local_dir = str(Path(storage).resolve() / run_name / "local") if training.num_workers == 0 else None
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec.to_dict(), "training": asdict(training), "has_val": val_ds is not None,
                           "torch_threads": torch_threads(training),
                           "mlflow": asdict(logger) if logger else None, "local_checkpoint_dir": local_dir},
        scaling_config=ray.train.ScalingConfig(num_workers=training.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(Path(storage).resolve()),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
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
    return FitResult(out_path, {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.floating))},
                     wall)
