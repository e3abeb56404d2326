"""Throughput of the metrics at the reference size 960x540, beside scikit-image's SSIM.

Not a pytest module (pytest collects ``test_*.py`` only). Run:

    OMP_NUM_THREADS=2 .venv/bin/python tests/perf/bench_metrics.py [--images 8] [--lpips-images 2] [--threads N]

Images are scikit-image's photographs resized to 960x540, renders the same with blur and noise. For each metric
it prints images/s of the batched tensor function (uint8 -> tensor conversion included) and of ``score_image``
one image at a time (quantization included); then, both on ready float inputs, the batched torch SSIMs beside
scikit-image's ``structural_similarity`` with the settings ``ssim_unpadded`` reproduces (float64 input, as the
tests' oracle, and float32), the largest difference between the two, and the speed ratio. LPIPS uses real
backbone weights when found, else random ones of the same architecture (same cost, meaningless values).

On a machine shared with other busy processes, multi-threaded torch stalls at every parallel region (each op
waits for a descheduled OpenMP thread): compare ``--threads 1`` runs there, or watch the cpu-ms column.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from skimage import data, filters, transform
from skimage.metrics import structural_similarity

from gfbench import metrics as M

WIDTH, HEIGHT = 960, 540


def make_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` ground-truth uint8 images and float renders (blur + noise), HxWx3 at 960x540."""
    photos = [data.astronaut(), data.coffee(), data.chelsea()]
    rng = np.random.default_rng(0)
    gts, renders = [], []
    for i in range(count):
        gt = transform.resize(photos[i % len(photos)], (HEIGHT, WIDTH), anti_aliasing=True)
        gts.append((gt * 255).astype(np.uint8))
        render = filters.gaussian(gt, sigma=1.0, channel_axis=-1) + rng.normal(0, 0.03, gt.shape)
        renders.append(np.clip(render, 0, 1).astype(np.float32))
    return np.stack(gts), np.stack(renders)


class Rate(float):
    """Images per second (wall clock, best of the repeats), carrying the CPU time per image of that run: on a
    shared, oversubscribed machine wall time misleads, and single-threaded CPU time is the better proxy."""

    cpu_ms: float

    def __str__(self) -> str:
        return f"{float(self):8.2f} img/s ({self.cpu_ms:7.1f} cpu-ms/img)"


def rate(fn, count: int, repeats: int) -> Rate:
    """Throughput of ``fn`` (which scores ``count`` images), best of ``repeats`` after a warm-up."""
    fn()
    wall, cpu = min(_timed(fn) for _ in range(repeats))
    result = Rate(count / wall)
    result.cpu_ms = 1000 * cpu / count
    return result


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def ensure_lpips_weights(scratch: Path) -> str | None:
    """None when real backbones are found; else ``scratch``, filled with random ones (and a notice)."""
    try:
        for net in M.LPIPS_BACKBONE_FILES:
            M.find_lpips_backbone(net)
        return None
    except M.LpipsWeightsMissing:
        pass
    from torchvision.models import alexnet, vgg

    features = {"vgg": vgg.make_layers(vgg.cfgs["D"]), "alex": alexnet().features}
    for net, module in features.items():
        state = {f"features.{k}": v for k, v in module.state_dict().items()}
        torch.save(state, scratch / M.LPIPS_BACKBONE_FILES[net])
    print("(no LPIPS backbones found: timing random ones of the same architecture; values meaningless)")
    return str(scratch)


def bench_metric(name: str, gt: np.ndarray, render: np.ndarray, repeats: int, weights: str | None) -> None:
    count = len(gt)
    render_u8 = np.stack([M.quantize(r) for r in render])
    fn = M.METRICS[name].fn
    kwargs = {"weights_dir": weights} if name in M.LPIPS_NETS else {}

    def batched():
        with torch.inference_mode():
            fn(M.to_tensor(render_u8), M.to_tensor(gt), **kwargs)

    def one_by_one():
        for r, g in zip(render, gt):
            M.score_image(r, g, [name], lpips_weights=weights)

    print(f"{name:17s} batched {rate(batched, count, repeats)}   "
          f"score_image {rate(one_by_one, count, repeats)}")


def bench_regions(gt: np.ndarray, render: np.ndarray, repeats: int) -> None:
    coverage = np.zeros(gt.shape[1:3], bool)
    coverage[100:370, 200:680] = True

    def scored():
        M.score_batch(render, gt, ["psnr", "ssim"], coverages=[coverage] * len(gt))

    print(f"{'psnr+ssim+regions':17s} score_batch {rate(scored, len(gt), repeats)} (6 values an image)")


def bench_skimage(gt: np.ndarray, render: np.ndarray, repeats: int) -> None:
    render_u8 = np.stack([M.quantize(r) for r in render])
    settings = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)
    inputs = {dtype: (render_u8.astype(dtype) / 255, gt.astype(dtype) / 255) for dtype in (np.float64, np.float32)}

    def skimage_ssim(dtype):
        a, b = inputs[dtype]
        return [structural_similarity(x, y, **settings) for x, y in zip(a, b)]

    x, y = M.to_tensor(render_u8), M.to_tensor(gt)  # both sides timed on ready float inputs

    def torch_ssim(fn=M.ssim_unpadded):
        with torch.inference_mode():
            return fn(x, y).tolist()

    diff = max(abs(s - t) for s, t in zip(skimage_ssim(np.float64), torch_ssim()))
    torch_rate = rate(torch_ssim, len(gt), repeats)
    padded_rate = rate(lambda: torch_ssim(M.ssim), len(gt), repeats)
    print(f"\ntorch ssim_unpadded  {torch_rate}\ntorch ssim (padded)  {padded_rate}")
    for dtype in (np.float64, np.float32):
        sk_rate = rate(lambda: skimage_ssim(dtype), len(gt), repeats)
        print(f"skimage SSIM {np.dtype(dtype).name:7s} {sk_rate}  ->  torch ssim_unpadded / skimage: "
              f"{torch_rate / sk_rate:.2f}x wall, {sk_rate.cpu_ms / torch_rate.cpu_ms:.2f}x cpu; "
              f"torch ssim / skimage: {padded_rate / sk_rate:.2f}x wall, "
              f"{sk_rate.cpu_ms / padded_rate.cpu_ms:.2f}x cpu")
    print(f"max |torch ssim_unpadded - skimage float64| over {len(gt)} images: {diff:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8, help="images per PSNR/SSIM timing")
    parser.add_argument("--lpips-images", type=int, default=2, help="images per LPIPS timing (slow on CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--metrics", nargs="*", default=list(M.METRICS))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="LPIPS-")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}), {os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.1f}, {WIDTH}x{HEIGHT}")
    gt, render = make_images(max(args.images, args.lpips_images))
    with tempfile.TemporaryDirectory(prefix="gfbench_lpips_") as scratch:
        weights = ensure_lpips_weights(Path(scratch)) if any(m in M.LPIPS_NETS for m in args.metrics) else None
        run_all(args, gt, render, weights)


def run_all(args: argparse.Namespace, gt: np.ndarray, render: np.ndarray, weights: str | None) -> None:
    for name in M.check_metrics(args.metrics):
        count = args.lpips_images if name in M.LPIPS_NETS else args.images
        repeats = 1 if name in M.LPIPS_NETS else args.repeats
        bench_metric(name, gt[:count], render[:count], repeats, weights)
    bench_regions(gt[: args.images], render[: args.images], args.repeats)
    bench_skimage(gt[: args.images], render[: args.images], args.repeats)


if __name__ == "__main__":
    main()
