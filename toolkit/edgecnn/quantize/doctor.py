"""A look at the calibration images before they set an int8 model's ranges: how many, duplicates, overlap with the
verification images (refused: agreement measured on the images the ranges were fitted to proves nothing), and
whether their brightness and colour resemble what the model will be verified on."""

from __future__ import annotations

import hashlib

import numpy as np

from edgecnn.errors import EdgeCNNError

FEW = 32  # fewer calibration images than this leave rare activations unseen
SHIFT = 0.5  # brightness or colour means further apart than this many verification standard deviations


def _digests(pixels: np.ndarray) -> list[str]:
    return [hashlib.sha256(np.ascontiguousarray(p).tobytes()).hexdigest() for p in pixels]


def _stats(pixels: np.ndarray) -> dict:
    per_image = pixels.reshape(len(pixels), -1, pixels.shape[-1]).astype(np.float64).mean(1)  # N × channels
    brightness = per_image.mean(1)
    return {"brightness_mean": round(float(brightness.mean()), 2), "brightness_std": round(float(brightness.std()), 2),
            "channel_means": [round(float(c), 2) for c in per_image.mean(0)]}


def examine(calibration: np.ndarray, verification: np.ndarray, refuse_overlap: bool = True) -> dict:
    """Numbers and warnings about the calibration set (N×H×W×C uint8), compared with the verification set.
    Shared images are refused, except between two splits of one labelled dataset (whose authors may have left
    identical images in both: a warning then)."""
    calib, verify = _digests(calibration), _digests(verification)
    shared = sum(d in set(verify) for d in calib)
    if shared and refuse_overlap:
        raise EdgeCNNError(f"{shared} of the {len(calib)} calibration images are also verification images: "
                           "calibrate on other images (another folder, or the training split)")
    duplicates = len(calib) - len(set(calib))
    report = {"samples": len(calib), "duplicates": duplicates, "overlap_with_verification": shared,
              "calibration": _stats(calibration), "verification": _stats(verification), "warnings": []}
    warnings = report["warnings"]
    if shared:
        warnings.append(f"{shared} calibration images also appear among the verification images")
    if len(calib) - duplicates < FEW:
        warnings.append(f"only {len(calib) - duplicates} distinct calibration images (fewer than {FEW}): ranges "
                        "may miss activations that rarer inputs produce")
    if duplicates:
        warnings.append(f"{duplicates} calibration images are exact duplicates of others")
    ours, theirs = report["calibration"], report["verification"]
    spread = max(theirs["brightness_std"], 16.0)  # pixel levels: a uniform verification set is no yardstick
    gap = ours["brightness_mean"] - theirs["brightness_mean"]
    if abs(gap) > SHIFT * spread:
        warnings.append(f"calibration images are {'brighter' if gap > 0 else 'darker'} than the verification images "
                        f"(mean {ours['brightness_mean']:.0f} vs {theirs['brightness_mean']:.0f}): calibrate on "
                        "images like the ones the model will see")
    elif np.abs(np.subtract(ours["channel_means"], theirs["channel_means"])).max() > SHIFT * spread:
        warnings.append(f"calibration images differ in colour from the verification images (channel means "
                        f"{ours['channel_means']} vs {theirs['channel_means']})")
    return report
