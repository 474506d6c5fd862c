"""SSDLite detectors on edgecnn's MobileNet backbones, built from torchvision's SSDLite parts.

The network ends at its raw outputs — a box encoding and class logits per anchor — so that int8 export keeps
every op a plain convolution (ReLU6 throughout the head) and decoding plus NMS happen in the runtime, where the
anchors and box coding travel in the model card (`edgecnn.runtime.detector`). Module names match torchvision's
`SSD` (`backbone`, `head`), so `ssdlite320_mobilenet_v3_large` weights load into `ssdlite_mobilenet_v3_large`.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssdlite import SSDLiteFeatureExtractorMobileNet, SSDLiteHead
from torchvision.ops import boxes as box_ops

from edgecnn.errors import EdgeCNNError, closest
from edgecnn.models import DETECTORS
from edgecnn.models.build import build_model, load_pretrained, weights_state_dict
from edgecnn.runtime.decoding import BoxCoding, Decoding

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # torchvision's SSD box coder: dx, dy, dw, dh
BOX_ORDER = "xywh"
# What the runtime shows by default: boxes scoring ≥ 0.5, suppressed above IoU 0.55 (torchvision SSDLite's NMS).
DEPLOY_MIN_SCORE, DEPLOY_NMS_IOU = 0.5, 0.55
NEW_LAYERS = ("head", "backbone.extra")  # what an ImageNet backbone does not bring


# torchvision's SSDLite uses BatchNorm with TF's eps and momentum for the layers it adds (and its own backbone).
SSD_NORM = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)


class _V2Block(nn.Module):
    """A MobileNetV2 block seen as torchvision's extractor expects a MobileNetV3 one (only its layers are kept)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block, self.use_res_connect = block.conv, block.use_res_connect


def anchor_generator(min_scale: float) -> DefaultBoxGenerator:
    """torchvision's SSDLite anchors: 6 feature maps, aspect ratios 1, 2, 3 (and their inverses), scales from
    `min_scale` to 0.95."""
    return DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=min_scale, max_ratio=0.95)


class SSDLite(nn.Module):
    """features(x) → 6 feature maps → (box encodings (N, A, 4) in BOX_ORDER, class logits (N, A, 1 + classes),
    column 0 the background)."""

    def __init__(self, features: nn.Sequential, num_classes: int, img_size: int, min_scale: float = 0.1):
        super().__init__()
        c4 = [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)][-1]
        # torchvision's extractor splits the C4 block after its expansion conv, which it finds as `.block`
        # (MobileNetV3); MobileNetV2 calls it `.conv`.
        blocks = [_V2Block(b) if i == c4 and not hasattr(b, "block") else b for i, b in enumerate(features)]
        self.backbone = SSDLiteFeatureExtractorMobileNet(nn.Sequential(*blocks), c4, SSD_NORM)
        self.img_size = img_size
        channels = det_utils.retrieve_out_channels(self.backbone, (img_size, img_size))
        generator = anchor_generator(min_scale)
        self.head = SSDLiteHead(channels, generator.num_anchors_per_location(), num_classes + 1, SSD_NORM)
        self.register_buffer("anchor_boxes", self._anchors(generator), persistent=False)

    @torch.no_grad()
    def _anchors(self, generator: DefaultBoxGenerator) -> torch.Tensor:
        """(A, 4) anchors as x1, y1, x2, y2 in input pixels, in the order of the head's outputs."""
        was_training = self.training
        self.eval()
        x = torch.zeros(1, 3, self.img_size, self.img_size)
        maps = list(self.backbone(x).values())
        self.train(was_training)
        return generator(ImageList(x, [(self.img_size, self.img_size)]), maps)[0]

    def anchors(self) -> np.ndarray:
        """The anchors as the model card stores them: (A, 4) cy, cx, h, w, normalised to the input."""
        a = self.anchor_boxes.cpu().numpy() / self.img_size
        return np.stack([(a[:, 1] + a[:, 3]) / 2, (a[:, 0] + a[:, 2]) / 2, a[:, 3] - a[:, 1], a[:, 2] - a[:, 0]],
                        axis=1).astype(np.float32)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(list(self.backbone(x).values()))
        return out["bbox_regression"], out["cls_logits"]

    def decoding(self, min_score: float = DEPLOY_MIN_SCORE, nms_iou: float = DEPLOY_NMS_IOU) -> Decoding:
        """The runtime's decoding of this model's outputs: float models are scored by the code their artefacts
        run with."""
        return Decoding(BoxCoding(self.anchors(), BOX_ORDER, BOX_WEIGHTS), "softmax", True, min_score, nms_iou)

    def card_section(self, boxes_output: str, scores_output: str) -> dict:
        """The model card's "detect" section for a file whose outputs have these names."""
        d = self.decoding()
        return {"outputs": {"boxes": boxes_output, "scores": scores_output}, "coding": d.coding.to_card(),
                "score": d.score_function, "background": d.background, "fit": "stretch", "min_score": d.min_score,
                "nms_iou": d.nms_iou}


class DetectionLoss(nn.Module):
    """SSD's loss, as torchvision's `SSD.compute_loss`: anchors match boxes at IoU ≥ 0.4 (torchvision: 0.5, which
    leaves small objects one anchor each) and each box also takes its best anchor; smooth-L1 on the matched
    anchors' encodings plus cross-entropy on them and on the hardest negatives, three per positive; both divided
    by the number of positives."""

    def __init__(self, anchor_boxes: torch.Tensor, neg_to_pos: int = 3, iou: float = 0.4):
        super().__init__()
        self.anchors = anchor_boxes
        self.coder = det_utils.BoxCoder(BOX_WEIGHTS)
        self.matcher = det_utils.SSDMatcher(iou)
        self.neg_to_pos = neg_to_pos

    def forward(self, encodings: torch.Tensor, logits: torch.Tensor,
                targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """`targets`: per image, "boxes" (K, 4) x1, y1, x2, y2 in input pixels and "labels" (K,) from 1."""
        box_losses, classes = [], []
        positives = 0
        for enc, target in zip(encodings, targets, strict=True):
            if len(target["boxes"]) == 0:
                classes.append(torch.zeros(len(self.anchors), dtype=torch.long, device=logits.device))
                continue
            matched = self.matcher(box_ops.box_iou(target["boxes"], self.anchors))
            fg = torch.where(matched >= 0)[0]
            positives += len(fg)
            wanted = self.coder.encode_single(target["boxes"][matched[fg]], self.anchors[fg])
            box_losses.append(nn.functional.smooth_l1_loss(enc[fg], wanted, reduction="sum"))
            label = torch.zeros(len(self.anchors), dtype=torch.long, device=logits.device)
            label[fg] = target["labels"][matched[fg]]
            classes.append(label)
        labels = torch.stack(classes)
        ce = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                         reduction="none").view(labels.shape)
        # Hard negatives: per image the background anchors with the highest loss, neg_to_pos per positive.
        fg_mask = labels > 0
        negatives = ce.clone()
        negatives[fg_mask] = -float("inf")
        order = negatives.sort(dim=1, descending=True)[1].sort(dim=1)[1]
        keep = order < (self.neg_to_pos * fg_mask.sum(1, keepdim=True)).clamp(min=self.neg_to_pos)
        n = max(1, positives)
        box = torch.stack(box_losses).sum() / n if box_losses else encodings.sum() * 0
        return {"boxes": box, "classes": (ce[fg_mask].sum() + ce[keep & ~fg_mask].sum()) / n}


def build_detector(name: str, num_classes: int, width: float = 1.0, img_size: int = 320,
                   weights: str | None = None) -> tuple[SSDLite, str | None]:
    """The detector `name` and a note of the weights it loaded: a whole detector's (edgecnn's or torchvision's
    SSDLite), or a classifier's ImageNet weights for its backbone (a file or a torchvision weights name)."""
    if name not in DETECTORS:
        raise EdgeCNNError(f"unknown detector '{name}'{closest(name, DETECTORS)}; available: {', '.join(DETECTORS)}")
    config = DETECTORS[name]
    state = weights_state_dict(config.backbone, weights) if weights else None
    whole = detector_state(state) if state is not None else None
    note = None
    if config.reduced_tail:
        features = torchvision.models.mobilenet_v3_large(width_mult=width, reduced_tail=True,
                                                         norm_layer=SSD_NORM).features
    else:
        classifier = build_model(config.backbone, 1000, width)
        if state is not None and whole is None:
            note = load_pretrained(classifier, config.backbone, weights, state) + " into the backbone"
        features = classifier.features
    if state is not None and whole is None and note is None:
        raise EdgeCNNError(f"{name} takes whole-detector weights (torchvision's ssdlite320_mobilenet_v3_large); "
                           f"{weights} holds a classifier's")
    model = SSDLite(features, num_classes, img_size, config.min_scale)
    if whole is not None:
        try:
            model.load_state_dict(whole)
        except RuntimeError as e:
            raise EdgeCNNError(f"weights {weights} do not fit {name} with {num_classes} classes: "
                               f"{str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}") from None
        note = f"loaded {weights} (the whole detector)"
    return model, note


def detector_state(state: dict[str, torch.Tensor]) -> OrderedDict | None:
    """The weights of a whole detector (an edgecnn or torchvision SSDLite state_dict: backbone and head; the
    anchor generator and transform hold none), or None for other weights (a classifier's)."""
    kept = OrderedDict((k, v) for k, v in state.items() if k.startswith(("backbone.", "head.")))
    return kept if any(k.startswith("head.") for k in kept) else None
