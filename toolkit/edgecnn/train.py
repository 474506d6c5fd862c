"""Training and evaluation, readable top to bottom: `train_one_epoch`, `evaluate`, then `train`.

Single process or DDP under torchrun (`torchrun --nproc_per_node N -m edgecnn train ...`): gloo on CPU,
nccl on GPU. Rank 0 evaluates, prints and writes checkpoints; the others wait at a barrier.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import track
from torch import nn

from edgecnn.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from edgecnn.data import Dataset, default_normalisation, load_dataset
from edgecnn.errors import EdgeCNNError
from edgecnn.loader import make_loader, normalise_batch, set_epoch
from edgecnn.models import model_spec
from edgecnn.models.build import build_model, load_pretrained
from edgecnn.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from edgecnn.prune import apply_layer_shapes, layer_shapes
from edgecnn.recipe import Recipe, TrainConfig, input_size, with_train_defaults
from edgecnn.transfer import (
    apply_freeze,
    backbone_blocks,
    frozen_blocks,
    head_parameters,
    keep_frozen_batchnorm,
    pretraining_warning,
)


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group torchrun set up in the environment; a plain run is a world of one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    ddp = Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", ddp.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return ddp


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EdgeCNNError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    if name != "cpu":
        raise EdgeCNNError(f"unknown device '{name}': use auto, cpu or cuda")
    return torch.device("cpu")


def preprocess_for(recipe: Recipe) -> Preprocess:
    """The input contract of the model: size, normalisation, crop. Pretrained weights imply ImageNet's."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if recipe.model.weights else default_normalisation(recipe.data.dataset)
    return Preprocess(
        img_size=input_size(recipe),
        mean=tuple(recipe.data.mean or mean),
        std=tuple(recipe.data.std or std),
        crop=recipe.data.crop,
    )


def learning_rate(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """SGD or AdamW; each parameter group's `lr_scale` multiplies the scheduled rate (backbone_lr / lr for the
    backbone when fine-tuning)."""
    cfg = recipe.train
    head = head_parameters(model, recipe.model.name)
    backbone_scale = (cfg.backbone_lr or cfg.lr) / cfg.lr
    groups = []
    for in_head, scale in ((True, 1.0), (False, backbone_scale)):
        params = [p for p in model.parameters() if (id(p) in head) == in_head]
        # No weight decay on BatchNorm and bias parameters: it only shrinks them towards zero.
        groups += [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay, "lr_scale": scale},
                   {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": scale}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    pre: Preprocess,
    device: torch.device,
    schedule,
    first_step: int,
    scaler: torch.amp.GradScaler | None,
    show_progress: bool,
    description: str,
    frozen: Sequence[nn.Module] = (),
) -> dict[str, float]:
    model.train()
    keep_frozen_batchnorm(frozen)
    total_loss, correct, seen = 0.0, 0, 0
    step = first_step
    batches = track(loader, description=description, transient=True, disable=not show_progress)
    for images, labels in batches:
        x = normalise_batch(images, pre, device)
        labels = labels.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        for group in optimizer.param_groups:
            group["lr"] = schedule(step) * group.get("lr_scale", 1.0)
        with torch.autocast(device.type, dtype=torch.float16, enabled=scaler is not None):
            logits = model(x)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if not math.isfinite(loss.item()):
            raise EdgeCNNError(f"training diverged (loss {loss.item()}) at step {step}; lower the learning rate")
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        step += 1
    return {"loss": total_loss / max(1, seen), "acc": correct / max(1, seen), "steps": step - first_step}


def defaults_note(recipe: Recipe) -> str | None:
    """One line naming the model family's training defaults that this (resolved) recipe trains with, or None where
    the user chose other values for all of them."""
    cfg = recipe.train
    family = with_train_defaults(replace(recipe, train=replace(cfg, lr=None, warmup_epochs=None))).train
    used = []
    if cfg.lr == family.lr:
        used.append(f"lr {cfg.lr:g}")
    if cfg.warmup_epochs == family.warmup_epochs:
        used.append(f"warmup_epochs {cfg.warmup_epochs:.3g}")
    if not used:
        return None
    return (f"{recipe.model.name}: {model_spec(recipe.model.name).family} family defaults {', '.join(used)} "
            "(--lr/--warmup-epochs or train.lr/train.warmup_epochs to change)")


def not_learning_warning(row: dict, num_classes: int, cfg: TrainConfig) -> str | None:
    """A warning line when an epoch at full learning rate left the model at chance: train loss no lower than a
    uniform guess's (ln C) and top-1 within a tenth of the way from chance to perfect. None otherwise."""
    guess_loss, chance = math.log(num_classes), 1 / num_classes
    if row["train_loss"] < 0.95 * guess_loss or row["top1"] > chance + 0.1 * (1 - chance):
        return None
    if row["train_loss"] > 1.1 * guess_loss:  # above a uniform guess: the steps overshoot
        fix = f"lower the learning rate (--lr {cfg.lr / 5:.2g}, now {cfg.lr:g})"
        fix += " and warm up (--warmup-epochs 1)" if not cfg.warmup_epochs else ""
    else:  # flat at a uniform guess: steps too small to move, or too large and the network collapsed
        fix = f"check that labels fit images, then try --lr {cfg.lr * 10:.2g} or {cfg.lr / 10:.2g} (now {cfg.lr:g})"
    return (f"warning: not learning after epoch {row['epoch']}: train loss {row['train_loss']:.3g} (a uniform guess "
            f"scores {guess_loss:.2f}), top-1 {row['top1']:.1%} (chance {chance:.1%}); {fix}")


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: torch.utils.data.DataLoader, pre: Preprocess, device: torch.device,
    show_progress: bool = False,
) -> dict[str, float]:
    """Top-1, top-5 (top-k for fewer classes) and mean loss over every batch of `loader`."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    top1 = top5 = 0
    loss, seen = 0.0, 0
    for images, labels in track(loader, description="evaluating", transient=True, disable=not show_progress):
        logits = model(normalise_batch(images, pre, device)).float()
        labels = labels.to(device)
        k = min(5, logits.shape[1])
        best = logits.topk(k, dim=1).indices
        top1 += (best[:, 0] == labels).sum().item()
        top5 += (best == labels[:, None]).any(dim=1).sum().item()
        loss += criterion(logits, labels).item()
        seen += len(labels)
    if seen == 0:
        raise EdgeCNNError("nothing to evaluate: the split is empty")
    return {"top1": top1 / seen, "top5": top5 / seen, "loss": loss / seen, "samples": seen}


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, loader: torch.utils.data.DataLoader, pre: Preprocess, device: torch.device, batches: int,
    frozen: Sequence[nn.Module] = (),
) -> None:
    """Re-estimate BatchNorm running statistics as a plain average over `batches` training batches.

    With a small BN momentum (torchvision's MobileNetV3 uses 0.01) the running statistics of a short training
    lag far behind the weights, and eval-mode accuracy collapses to chance. BatchNorm layers in `frozen`
    blocks keep their (pretrained) statistics: the head was trained on features computed with them.
    """
    kept = {id(m) for block in frozen for m in block.modules()}
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in kept]
    if not norms or batches <= 0:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    keep_frozen_batchnorm(frozen)
    for i, (images, _) in enumerate(loader):
        if i >= batches:
            break
        model(normalise_batch(images, pre, device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


@dataclass
class TrainResult:
    best: float  # the best epoch's held-out score (`metric`), which best.pt holds
    last: float
    epochs: int
    seconds: float
    history: list[dict]
    best_path: Path
    last_path: Path
    warning: str | None = None  # not_learning_warning's line, if an epoch printed it
    metric: str = "top1"  # a classifier's top-1; a detector's map50


def _resume_state(last_path: Path, recipe: Recipe) -> Checkpoint:
    ckpt = load_checkpoint(last_path)
    if ckpt.training is None:
        raise EdgeCNNError(f"{last_path} has no training state to resume from")
    if (ckpt.model, ckpt.width, ckpt.dataset) != (recipe.model.name, recipe.model.width, recipe.data.dataset):
        raise EdgeCNNError(
            f"cannot resume: {last_path} trained {ckpt.model} (width {ckpt.width}) on {ckpt.dataset}, "
            f"not {recipe.model.name} (width {recipe.model.width}) on {recipe.data.dataset}"
        )
    return ckpt


def train(
    recipe: Recipe, out_dir: str | Path, *, resume: bool = False, console: Console | None = None,
    dataset: Dataset | None = None, model: nn.Module | None = None,
) -> TrainResult:
    """Train `recipe`'s model on its dataset; write out_dir/best.pt and out_dir/last.pt after every epoch.

    `model` starts from given weights and shapes instead of the registry's (fine-tuning a pruned model); its
    layer shapes are stored in the checkpoints. Unset learning rate and warm-up take the model family's defaults."""
    recipe = with_train_defaults(recipe)
    cfg, out_dir = recipe.train, Path(out_dir)
    console = console or Console()
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    ddp = init_distributed(device)
    torch.manual_seed(recipe.seed)
    show = console.is_terminal and ddp.is_main

    dataset = dataset or load_dataset(recipe.data.dataset)
    pre = preprocess_for(recipe)
    structure = layer_shapes(model) if model is not None else None
    if model is None:
        model = build_model(recipe.model.name, len(dataset.classes), recipe.model.width)
    if recipe.model.weights and structure is None:
        note = load_pretrained(model, recipe.model.name, recipe.model.weights)
        if ddp.is_main:
            console.print(note)
            warning = pretraining_warning(recipe)
            if warning:
                console.print(warning)
    if cfg.freeze != "none" and ddp.world_size > 1:
        raise EdgeCNNError("train.freeze with several processes (torchrun) is not supported; train in one process")
    blocks = backbone_blocks(model, recipe.model.name)
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)

    sampler = (
        torch.utils.data.DistributedSampler(dataset.train.labels, ddp.world_size, ddp.rank, seed=recipe.seed)
        if ddp.world_size > 1
        else None
    )
    data = recipe.data
    train_loader = make_loader(
        dataset.train, pre, data.batch_size, train=True, augment=tuple(data.augment), seed=recipe.seed,
        workers=data.workers, sampler=sampler,
    )
    test_loader = make_loader(dataset.test, pre, data.batch_size * 2, train=False, workers=data.workers)
    optimizer = make_optimizer(model, recipe)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and cfg.amp else None
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    steps_per_epoch = len(train_loader)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)

    def schedule(step: int) -> float:
        return learning_rate(step, total_steps, warmup_steps, cfg.lr)

    start_epoch, best_top1, history = 0, -1.0, []
    best_path, last_path = out_dir / "best.pt", out_dir / "last.pt"
    if resume and last_path.is_file():
        state = _resume_state(last_path, recipe)
        if state.structure:
            apply_layer_shapes(model, state.structure)
            structure = state.structure
        model.load_state_dict(state.state_dict)
        optimizer.load_state_dict(state.training["optimizer"])
        start_epoch = int(state.training["epoch"])
        best_top1 = float(state.training["best_top1"])
        history = list(state.training["history"])
        if ddp.is_main:
            console.print(f"resuming from {last_path} after epoch {start_epoch}")
    elif resume and ddp.is_main:
        console.print(f"no {last_path} to resume from; starting from scratch")

    trained = model
    if ddp.world_size > 1:
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    note = defaults_note(recipe)
    if ddp.is_main and note:
        console.print(note, soft_wrap=True)
    if ddp.is_main and start_epoch < cfg.epochs:
        console.print(f"{'epoch':>5} {'lr':>9} {'loss':>8} {'train':>7} {'top1':>7} {'top5':>7} {'time':>7}")
    started, warning = time.perf_counter(), None
    for epoch in range(start_epoch, cfg.epochs):
        epoch_started = time.perf_counter()
        set_epoch(train_loader, epoch, recipe.seed)
        frozen_names = frozen_blocks(recipe, epoch, blocks)
        frozen = apply_freeze(blocks, frozen_names)
        if cfg.freeze != "none" and ddp.is_main and epoch in (start_epoch, cfg.unfreeze and cfg.unfreeze.at_epoch):
            trainable = [n for n, _ in blocks if n not in frozen_names]
            console.print(f"epoch {epoch + 1}: backbone blocks frozen: {len(frozen_names)} of {len(blocks)}; "
                          f"training the head" + (f" and {', '.join(trainable)}" if trainable else " only"))
        fit = train_one_epoch(
            trained, train_loader, criterion, optimizer, pre, device, schedule, epoch * steps_per_epoch,
            scaler, show, f"epoch {epoch + 1}/{cfg.epochs}", frozen,
        )
        if ddp.is_main:
            recalibrate_batchnorm(model, train_loader, pre, device, cfg.bn_recalibration_batches, frozen)
            metrics = evaluate(model, test_loader, pre, device)
            row = {
                "epoch": epoch + 1, "lr": schedule((epoch + 1) * steps_per_epoch - 1), "train_loss": fit["loss"],
                "train_acc": fit["acc"], "top1": metrics["top1"], "top5": metrics["top5"],
                "seconds": time.perf_counter() - epoch_started,
            }
            history.append(row)
            console.print(
                f"{row['epoch']:>5} {row['lr']:>9.2e} {row['train_loss']:>8.4f} {row['train_acc']:>7.2%} "
                f"{row['top1']:>7.2%} {row['top5']:>7.2%} {row['seconds']:>6.1f}s"
            )
            if warning is None and epoch + 1 >= min(cfg.warmup_epochs, cfg.epochs):  # judged at full rate only
                warning = not_learning_warning(row, len(dataset.classes), cfg)
                if warning:
                    console.print(warning, soft_wrap=True)
            ckpt = Checkpoint(
                model=recipe.model.name, width=recipe.model.width, num_classes=len(dataset.classes),
                labels=dataset.classes, preprocess=pre, dataset=recipe.data.dataset,
                state_dict=model.state_dict(), metrics={k: metrics[k] for k in ("top1", "top5", "samples")},
                recipe_hash=recipe.hash, structure=structure,
            )
            if metrics["top1"] > best_top1:
                best_top1 = metrics["top1"]
                save_checkpoint(best_path, ckpt)
            ckpt.training = {
                "epoch": epoch + 1, "best_top1": best_top1, "history": history,
                "optimizer": optimizer.state_dict(), "config": asdict(recipe.train),
            }
            save_checkpoint(last_path, ckpt)
        ddp.barrier()

    if ddp.world_size > 1:
        dist.destroy_process_group()
    last_top1 = history[-1]["top1"] if history else float("nan")
    return TrainResult(best_top1, last_top1, cfg.epochs, time.perf_counter() - started, history, best_path, last_path,
                       warning)
