"""Benchmark: what one optimisation step of a 3D student costs on the CPU, part by part, side by side in one run.

    .venv/bin/python bench/student_step.py                   # E5's student: UNet(16-128) 3D, 8 classes, 2 x 48^3
    .venv/bin/python bench/student_step.py --steps 5 --rounds 1 --patch 32   # smoke (seconds)

Every path takes the same batch (``image`` float16 ``[B, 1, p, p, p]``, ``target`` uint8 soft labels ``[B, C, p, p,
p]`` as the patch dataset gives them) and the same network, optimiser and augmentation, seeded alike:
  (a) ``network``: forward, cross-entropy on integer labels, backward, AdamW: the floor no loss can go under;
  (b) ``every part``: ``training.loop.train_step`` computing every loss part every step (the loop's behaviour before
      ``losses.LOG_PARTS_EVERY``: parts of weight 0 are computed to be logged);
  (c) ``as the loop``: ``train_step`` as ``training.loop.fit`` calls it, the parts of weight 0 computed one step in
      ``LOG_PARTS_EVERY``;
and, apart, the hard label's arg-max over the class axis by ``argmax(1)`` and by ``max(1).indices`` (what
``losses.segmentation_loss`` uses now). Paths alternate for ``--rounds`` rounds of ``--steps`` steps each after two
warm-up steps; each figure is the median over rounds of the mean seconds per step, and the ratios are of those
medians, measured in the same process at the same thread count (``--threads``, default all cores).
Cost on 2 CPU cores: about ``rounds x 3 x steps x 0.15`` s, ~1 min with the defaults.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patch", type=int, default=48)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--steps", type=int, default=24, help="steps per path and round (a multiple of LOG_PARTS_EVERY)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default="bench/results/student_step.json")
    args = p.parse_args()

    import numpy as np
    import torch
    from monai.networks.nets import UNet

    from nakt_ray.config.schema import TrainingConfig
    from nakt_ray.data.augment3d import VolumeAugmenter
    from nakt_ray.losses import LOG_PARTS_EVERY
    from nakt_ray.training.loop import train_step

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    shape = (args.batch, args.patch, args.patch, args.patch)
    soft = rng.dirichlet(np.full(args.classes, 0.2), size=shape).astype(np.float32)  # [B, p, p, p, C]
    batch = {"image": torch.from_numpy(rng.standard_normal((args.batch, 1, *shape[1:])).astype(np.float16)),
             "target": torch.from_numpy(np.ascontiguousarray(np.moveaxis(soft * 255, -1, 1)).round().astype(np.uint8))}
    labels = batch["target"].max(1).indices
    tc = TrainingConfig()

    def model_and_opt():
        torch.manual_seed(0)
        net = UNet(3, 1, args.classes, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=0)
        return net, torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)

    def network(net, opt, augmenter, step):
        loss = torch.nn.functional.cross_entropy(net(batch["image"].float()), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def every_part(net, opt, augmenter, step):
        train_step(net, opt, batch, tc, augmenter, log_parts=True)

    def as_the_loop(net, opt, augmenter, step):
        train_step(net, opt, batch, tc, augmenter, log_parts=step % LOG_PARTS_EVERY == 0)

    paths = {"network": network, "every part": every_part, "as the loop": as_the_loop}
    state = {name: (*model_and_opt(), VolumeAugmenter(tc.augment_strength, seed=0)) for name in paths}
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, fn in paths.items():
            for step in range(2):  # warm-up
                fn(*state[name], step)
            t = time.perf_counter()
            for step in range(args.steps):
                fn(*state[name], step)
            seconds[name].append((time.perf_counter() - t) / args.steps)

    target = batch["target"].float()
    arg: dict[str, list[float]] = {"argmax(1)": [], "max(1).indices": []}
    for _ in range(args.rounds):
        for name, fn in (("argmax(1)", lambda: target.argmax(1)), ("max(1).indices", lambda: target.max(1).indices)):
            t = time.perf_counter()
            for _ in range(args.steps):
                fn()
            arg[name].append((time.perf_counter() - t) / args.steps)
    assert torch.equal(target.argmax(1), target.max(1).indices), "max's indices must name argmax's class"

    med = {name: statistics.median(v) for name, v in {**seconds, **arg}.items()}
    result = {
        "host": {"cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                 "python": platform.python_version()},
        "settings": {k: getattr(args, k) for k in ("patch", "batch", "classes", "steps", "rounds")},
        "log_parts_every": LOG_PARTS_EVERY,
        "s_per_step": {name: round(v, 4) for name, v in med.items()},
        "per_round_s": {name: [round(x, 4) for x in v] for name, v in {**seconds, **arg}.items()},
        "ratios": {
            "speed, as the loop / every part": round(med["every part"] / med["as the loop"], 3),
            "loss share of the step, every part": round(1 - med["network"] / med["every part"], 3),
            "loss share of the step, as the loop": round(1 - med["network"] / med["as the loop"], 3),
            "speed, max(1).indices / argmax(1)": round(med["argmax(1)"] / med["max(1).indices"], 3),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"3D student step, UNet(16-128), {args.batch} x {args.patch}^3, {args.classes} classes, "
          f"{args.threads} threads (median of {args.rounds} rounds of {args.steps} steps):")
    for name, v in med.items():
        print(f"  {name:>16}: {v * 1000:8.1f} ms")
    for name, v in result["ratios"].items():
        print(f"  {name}: {v}")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
