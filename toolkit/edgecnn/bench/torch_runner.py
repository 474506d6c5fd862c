"""The PyTorch reference measurement of an edgecnn checkpoint, in its own process: eager on the CPU, or on
CUDA in fp32/fp16, channels_last, with a CUDA graph for small batches (batch 1 is launch-bound without one).

    python -m edgecnn.bench.torch_runner JOB.json

Prints the same result line as `edgecnn.bench.runner`, so the harness treats both alike.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from edgecnn.bench.runner import encode_array, main, peak_rss_mb, time_runs, timing_result
from edgecnn.checkpoint import load_checkpoint
from edgecnn.errors import EdgeCNNError
from edgecnn.loader import normalise_batch

CUDA_GRAPH_MAX_BATCH = 8  # above this, launch overhead no longer dominates and graphs only cost memory


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise EdgeCNNError("--device cuda: this PyTorch sees no CUDA GPU (torch.cuda.is_available() is False)")
    return torch.device(name)


def _runner(model: torch.nn.Module, x: torch.Tensor, device: torch.device, cuda_graph: bool):
    """A no-argument callable that runs one batch and returns once its result exists."""
    if device.type != "cuda":
        return lambda: model(x)
    if not cuda_graph:
        def run():
            model(x)
            torch.cuda.synchronize()
        return run
    stream = torch.cuda.Stream()  # capture needs warm-up on a side stream (cuDNN picks its kernels there)
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(x)

    def replay():
        graph.replay()
        torch.cuda.synchronize()
    return replay


def execute(job: dict) -> dict:
    torch.set_num_threads(job["threads"])
    device = _device(job["device"])
    started = time.perf_counter()
    ckpt = load_checkpoint(job["model"])
    model = ckpt.build().eval().to(device)
    dtype = torch.float16 if job["precision"] == "float16" else torch.float32
    memory_format = torch.channels_last if job.get("channels_last") else torch.contiguous_format
    model = model.to(dtype=dtype, memory_format=memory_format)
    if device.type == "cuda":
        torch.cuda.synchronize()
    load_ms = (time.perf_counter() - started) * 1000
    size = ckpt.preprocess.img_size
    batch = job["input_shape"][0]
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype).contiguous(memory_format=memory_format)
    cuda_graph = device.type == "cuda" and batch <= CUDA_GRAPH_MAX_BATCH
    with torch.inference_mode():
        started = time.perf_counter()
        model(x)  # the first inference, before any warm-up or graph capture
        if device.type == "cuda":
            torch.cuda.synchronize()
        first_ms = (time.perf_counter() - started) * 1000
        run = _runner(model, x, device, cuda_graph)
        _, samples = time_runs(run, job["warmup"], job["runs"], job["min_seconds"])
        result = timing_result(f"torch-{device.type}" + ("-graph" if cuda_graph else ""), load_ms, first_ms, samples,
                               (batch, 3, size, size), str(dtype).removeprefix("torch."))
        if job.get("inputs") and job.get("want_outputs", True):
            images = torch.from_numpy(np.load(job["inputs"]))
            chunks = []
            for i in range(0, len(images), 256):
                out = model(normalise_batch(images[i : i + 256], ckpt.preprocess, device).to(dtype=dtype))
                chunks.append([o.float().cpu().numpy() for o in (out if isinstance(out, tuple) else (out,))])
            result["outputs"] = [encode_array(np.concatenate(parts)) for parts in zip(*chunks, strict=True)]
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], execute))
