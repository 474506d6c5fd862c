"""Training and evaluation of detectors, readable top to bottom: `train_one_epoch`, `evaluate`, then
`train_detector`. The same shape as `edgecnn.train` (schedule, optimizer, checkpoints): only the data, the loss
(SSD's, with hard-negative mining) and the metric (mAP with COCO's evaluator) differ.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from torch import nn

from edgecnn.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from edgecnn.detection.data import BoxDataset, load_box_dataset
from edgecnn.detection.metrics import Boxes, decode_boxes, detection_map
from edgecnn.errors import EdgeCNNError
from edgecnn.loader import normalise_batch
from edgecnn.models.ssdlite import DetectionLoss, SSDLite, build_detector
from edgecnn.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, resize_image
from edgecnn.recipe import Recipe, with_train_defaults
from edgecnn.runtime.decoding import EVAL_MIN_SCORE, Decoding
from edgecnn.train import TrainResult, learning_rate, make_optimizer, resolve_device

DEFAULT_IMG_SIZE = 320


class TorchBoxes(torch.utils.data.Dataset):
    """Serves (uint8 image at the model's size, target, index): the frame stretched to a square, its boxes in the
    input's pixels and its labels from 1 (0 is the background). Augmentation: a horizontal flip and a little
    brightness and contrast, seeded by (seed, epoch, index)."""

    def __init__(self, data: BoxDataset, pre: Preprocess, augment: bool = False, seed: int = 0):
        self.data, self.pre, self.augment, self.seed = data, pre, augment, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        record = self.data.images[i]
        image = resize_image(record.image(), self.pre)
        boxes = record.boxes * self.pre.img_size
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            if rng.random() < 0.5:
                image = np.ascontiguousarray(image[:, ::-1])
                boxes = np.stack([self.pre.img_size - boxes[:, 2], boxes[:, 1], self.pre.img_size - boxes[:, 0],
                                  boxes[:, 3]], axis=1)
            gain, shift = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
            image = np.clip(image.astype(np.float32) * gain + shift, 0, 255).astype(np.uint8)
        target = {"boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  "labels": torch.as_tensor(record.labels + 1, dtype=torch.long)}
        return torch.from_numpy(image), target, i


def collate(batch):
    images, targets, indices = zip(*batch, strict=True)
    return torch.stack(images), list(targets), list(indices)


def make_box_loader(data: BoxDataset, pre: Preprocess, batch_size: int, *, train: bool, seed: int = 0,
                    workers: int = 0) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(seed) if train else None
    return torch.utils.data.DataLoader(TorchBoxes(data, pre, train, seed), batch_size=batch_size, shuffle=train,
                                       generator=generator, num_workers=workers, collate_fn=collate)


def train_one_epoch(model: nn.Module, loader, criterion: DetectionLoss, optimizer: torch.optim.Optimizer,
                    pre: Preprocess, device: torch.device, schedule, first_step: int, show_progress: bool,
                    description: str) -> dict[str, float]:
    model.train()
    totals = {"boxes": 0.0, "classes": 0.0}
    step, seen = first_step, 0
    for images, targets, _ in track(loader, description=description, transient=True, disable=not show_progress):
        x = normalise_batch(images, pre, device)
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        for group in optimizer.param_groups:
            group["lr"] = schedule(step) * group.get("lr_scale", 1.0)
        losses = criterion(*model(x), targets)
        loss = losses["boxes"] + losses["classes"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not math.isfinite(loss.item()):
            raise EdgeCNNError(f"training diverged (loss {loss.item()}) at step {step}; lower the learning rate")
        for key in totals:
            totals[key] += losses[key].item() * len(images)
        seen += len(images)
        step += 1
    return {"loss": sum(totals.values()) / max(1, seen), **{k: v / max(1, seen) for k, v in totals.items()},
            "steps": step - first_step}


@torch.no_grad()
def predict(model: SSDLite, loader, pre: Preprocess, device: torch.device, decoding: Decoding) -> list[Boxes]:
    """The model's boxes on every image of `loader`, in the input's pixels, decoded as the runtime decodes."""
    model.eval()
    found = []
    for images, _, _ in loader:
        encodings, logits = model(normalise_batch(images, pre, device))
        found += decode_boxes(decoding, encodings.cpu().numpy(), logits.cpu().numpy(), pre.img_size)
    return found


def truth(loader) -> list[Boxes]:
    return [Boxes(t["boxes"].numpy(), t["labels"].numpy() - 1) for _, targets, _ in loader for t in targets]


def evaluate(model: SSDLite, loader, pre: Preprocess, device: torch.device, classes: int) -> dict[str, float]:
    """mAP@0.5 and mAP@0.5:0.95 on `loader`'s images (COCO's evaluator, boxes of score ≥ EVAL_MIN_SCORE)."""
    return detection_map(truth(loader), predict(model, loader, pre, device, model.decoding(EVAL_MIN_SCORE)),
                         classes)


def detector_preprocess(recipe: Recipe) -> Preprocess:
    """The whole frame stretched to a square (boxes need all of it), ImageNet's normalisation for ImageNet
    backbones."""
    return Preprocess(img_size=recipe.data.img_size or DEFAULT_IMG_SIZE, mean=tuple(recipe.data.mean or IMAGENET_MEAN),
                      std=tuple(recipe.data.std or IMAGENET_STD), crop=None)


def train_detector(recipe: Recipe, out_dir: str | Path, *, resume: bool = False,
                   console: Console | None = None) -> TrainResult:
    """Train `recipe`'s detector on data.dataset, score it on data.val each epoch; write out_dir/best.pt (best
    mAP@0.5) and out_dir/last.pt."""
    recipe = with_train_defaults(recipe)
    cfg, out_dir = recipe.train, Path(out_dir)
    console = console or Console()
    device = resolve_device(cfg.device)
    torch.manual_seed(recipe.seed)
    train_data, val_data = load_box_dataset(recipe.data.dataset), load_box_dataset(recipe.data.val)
    if val_data.classes != train_data.classes:
        raise EdgeCNNError(f"data.val names classes {val_data.classes}, data.dataset {train_data.classes}")
    pre = detector_preprocess(recipe)
    classes = len(train_data.classes)
    model, note = build_detector(recipe.model.name, classes, recipe.model.width, pre.img_size, recipe.model.weights)
    if note:
        console.print(note)
    model.to(device)
    train_loader = make_box_loader(train_data, pre, recipe.data.batch_size, train=True, seed=recipe.seed,
                                   workers=recipe.data.workers)
    val_loader = make_box_loader(val_data, pre, recipe.data.batch_size * 2, train=False, workers=recipe.data.workers)
    optimizer = make_optimizer(model, recipe)
    criterion = DetectionLoss(model.anchor_boxes.to(device))
    steps_per_epoch = len(train_loader)
    total_steps, warmup_steps = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)

    def schedule(step: int) -> float:
        return learning_rate(step, total_steps, warmup_steps, cfg.lr)

    start_epoch, best, history = 0, -1.0, []
    best_path, last_path = out_dir / "best.pt", out_dir / "last.pt"
    if resume and last_path.is_file():
        state = load_checkpoint(last_path)
        if state.training is None or state.model != recipe.model.name:
            raise EdgeCNNError(f"cannot resume from {last_path}: it is not a {recipe.model.name} training state")
        model.load_state_dict(state.state_dict)
        optimizer.load_state_dict(state.training["optimizer"])
        start_epoch, best = int(state.training["epoch"]), float(state.training["best_map50"])
        history = list(state.training["history"])
        console.print(f"resuming from {last_path} after epoch {start_epoch}")
    show = console.is_terminal
    if start_epoch < cfg.epochs:
        console.print(f"{'epoch':>5} {'lr':>9} {'loss':>8} {'boxes':>7} {'classes':>7} {'mAP50':>7} {'mAP':>7} "
                      f"{'time':>7}")
    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        epoch_started = time.perf_counter()
        train_loader.dataset.epoch = epoch
        train_loader.generator.manual_seed(recipe.seed * 1000 + epoch)
        fit = train_one_epoch(model, train_loader, criterion, optimizer, pre, device, schedule,
                              epoch * steps_per_epoch, show, f"epoch {epoch + 1}/{cfg.epochs}")
        metrics = evaluate(model, val_loader, pre, device, classes)
        row = {"epoch": epoch + 1, "lr": schedule((epoch + 1) * steps_per_epoch - 1), "train_loss": fit["loss"],
               "box_loss": fit["boxes"], "class_loss": fit["classes"], "map50": metrics["map50"],
               "map": metrics["map"], "seconds": time.perf_counter() - epoch_started}
        history.append(row)
        console.print(f"{row['epoch']:>5} {row['lr']:>9.2e} {row['train_loss']:>8.4f} {row['box_loss']:>7.3f} "
                      f"{row['class_loss']:>7.3f} {row['map50']:>7.3f} {row['map']:>7.3f} {row['seconds']:>6.1f}s")
        ckpt = Checkpoint(model=recipe.model.name, width=recipe.model.width, num_classes=classes,
                          labels=train_data.classes, preprocess=pre, dataset=recipe.data.dataset,
                          state_dict=model.state_dict(), val_dataset=recipe.data.val,
                          metrics={"map50": metrics["map50"], "map": metrics["map"], "samples": len(val_data)},
                          recipe_hash=recipe.hash)
        if metrics["map50"] > best:
            best = metrics["map50"]
            save_checkpoint(best_path, ckpt)
        ckpt.training = {"epoch": epoch + 1, "best_map50": best, "history": history,
                         "optimizer": optimizer.state_dict(), "config": asdict(recipe.train)}
        save_checkpoint(last_path, ckpt)
    last = history[-1]["map50"] if history else float("nan")
    return TrainResult(best, last, cfg.epochs, time.perf_counter() - started, history, best_path, last_path,
                       metric="map50")
