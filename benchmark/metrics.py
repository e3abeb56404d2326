"""Image metrics as the GenFusion paper computed them (see PROTOCOL.md, "Metrics, as the paper computed them").

Every score is taken on uint8-quantized images: renders and ground truth are NaN-cleaned, clipped to [0, 1] and
quantized (truncation by default, as GenFusion's code does; rounding, as 3DGS's image saving does, on request),
then read back as ``n / 255``.

Metric functions work on batches: ``(B, 3, H, W)`` float tensors in [0, 1] in, one value per image out.

* ``psnr``           20 log10(1 / sqrt(MSE)) per image.
* ``ssim``           11x11 Gaussian window (sigma 1.5) with zero "same" padding, mean of the map: 3DGS's
                     ``utils/loss_utils.py:ssim``, the paper's number.
* ``ssim_unpadded``  the same window with the border (5 px) cropped from the map: scikit-image's
                     ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
* ``lpips_vgg_3dgs`` LPIPS-VGG fed [0, 1] inputs without the mapping to [-1, 1] (3DGS's quirk, the paper's number).
* ``lpips_vgg``, ``lpips_alex``  standard ``lpips`` usage (inputs mapped to [-1, 1]).

With a coverage mask (bool HxW: pixels some train view observed) PSNR and SSIM are also reported over the
covered and the uncovered pixels alone (``psnr_covered``, ``ssim_uncovered``, ...): the MSE or the mean of the
SSIM map over those pixels, NaN when the region is empty.

With a validity mask (bool HxW: pixels that have a source; an undistorted frame's corners may have none) the
pixels outside it are never scored: the render takes the ground truth's values there (so no window or
receptive field sees a difference), PSNR and SSIM average over the valid pixels only (coverage regions are
cut to them too), and LPIPS averages its spatial map (``lpips``' ``spatial=True``) over them.

LPIPS backbones (torchvision's ImageNet VGG16 / AlexNet files) are read from a folder the caller names,
``$GFBENCH_LPIPS_WEIGHTS``, or torch's hub cache. A file in none of them is downloaded into torch's hub cache
from torchvision's address, as torchvision itself does (short timeout, sha256 prefix checked), unless
``$GFBENCH_NO_DOWNLOAD`` is set; when that fails the error says where to put the file by hand.
``gfbench weights fetch`` does the download up front.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

# --------------------------------------------------------------------------------------------------------------
# Protocol constants
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SSIMWindow:
    """The SSIM window of Wang et al. 2004 as 3DGS uses it: an ``size`` x ``size`` Gaussian (std ``sigma``),
    stabilisers ``C1 = (k1 * L)^2`` and ``C2 = (k2 * L)^2`` for data range ``L``."""

    size: int = 11
    sigma: float = 1.5
    k1: float = 0.01
    k2: float = 0.03
    data_range: float = 1.0

    @property
    def radius(self) -> int:
        return self.size // 2

    @property
    def c1(self) -> float:
        return (self.k1 * self.data_range) ** 2

    @property
    def c2(self) -> float:
        return (self.k2 * self.data_range) ** 2

    @property
    def taps(self) -> tuple[float, ...]:
        """Normalised 1-D Gaussian; the 2-D window is its outer product (separable)."""
        weights = [math.exp(-((i - self.radius) ** 2) / (2 * self.sigma**2)) for i in range(self.size)]
        total = sum(weights)
        return tuple(w / total for w in weights)


SSIM_WINDOW = SSIMWindow()
"""11x11, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2 on [0, 1] data (3DGS and scikit-image with gaussian_weights)."""

QUANTIZE_MODES = ("truncate", "round")
"""``truncate``: ``uint8(clip(nan_to_num(x), 0, 1) * 255)`` (GenFusion code, default);
``round``: the same with ``+ 0.5`` before truncating (3DGS's image saving)."""

REGIONS = ("covered", "uncovered")
"""Region-aware suffixes: pixels a train view observed, and the rest."""

LPIPS_WEIGHTS_ENV = "GFBENCH_LPIPS_WEIGHTS"
"""Folder holding torchvision's backbone files (``vgg16-397923af.pth``, ``alexnet-owt-7be5be79.pth``)."""

LPIPS_BACKBONE_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}
"""torchvision's file names; the part after the dash is the start of the file's published sha256."""

NO_DOWNLOAD_ENV = "GFBENCH_NO_DOWNLOAD"
"""Set (to anything but 0/false/no/off) to never download backbone files."""

LPIPS_DOWNLOAD_URL = "https://download.pytorch.org/models/{name}"
"""Where torchvision downloads its ImageNet weights from."""

LPIPS_DOWNLOAD_TIMEOUT_S = 10.0
"""Seconds a download may wait on the network (per connection attempt and per read)."""

LPIPS_CPU_CHUNK = 2
"""Images per LPIPS forward pass on CPU (VGG activations at 960x540 are ~0.5 GB an image)."""

SSIM_PER_MAP_DEVICES = ("cpu",)
"""Device types on which SSIM is computed one image channel at a time (cache-sized work, ~2x faster on CPU);
other devices (CUDA) take the whole batch in one pass."""


# --------------------------------------------------------------------------------------------------------------
# Quantization and conversion
# --------------------------------------------------------------------------------------------------------------


def quantize(image: np.ndarray, mode: str = "truncate") -> np.ndarray:
    """uint8 version of ``image``: uint8 passes through; floats are NaN-cleaned, clipped to [0, 1] and scaled
    by 255, then truncated (``mode="truncate"``) or rounded half up (``mode="round"``)."""
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {mode!r}; known: {', '.join(QUANTIZE_MODES)}")
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"images must be uint8 or float in [0, 1], got dtype {image.dtype}")
    if image.dtype == np.float16:
        image = image.astype(np.float32)
    scaled = np.nan_to_num(image)  # a copy, modified in place below
    np.clip(scaled, 0, 1, out=scaled)
    scaled *= image.dtype.type(255)
    if mode == "round":
        scaled += image.dtype.type(0.5)
    return scaled.astype(np.uint8)


def to_tensor(images: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """``(B, H, W, 3)`` uint8 -> ``(B, 3, H, W)`` float32 ``n / 255`` on ``device``."""
    batch = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)
    return batch.to(torch.float32, memory_format=torch.contiguous_format).div_(255)


# --------------------------------------------------------------------------------------------------------------
# PSNR
# --------------------------------------------------------------------------------------------------------------


def squared_error_map(render: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-pixel squared error averaged over channels, ``(B, H, W)`` float64."""
    return (render.double() - gt).square_().mean(1)


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """20 log10(1 / sqrt(MSE)) for data in [0, 1] (inf for MSE 0, NaN stays NaN)."""
    return 20 * torch.log10(1 / torch.sqrt(mse))


def psnr(render: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR of ``(B, 3, H, W)`` [0, 1] batches, ``(B,)`` float64."""
    return psnr_from_mse(squared_error_map(render, gt).mean((1, 2)))


# --------------------------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------------------------


def _correlate(x: torch.Tensor, taps: Sequence[float], dim: int, out: torch.Tensor) -> torch.Tensor:
    """Valid 1-D correlation of ``x`` with ``taps`` along ``dim`` into ``out`` (shorter by ``len(taps) - 1``)."""
    length = out.shape[dim]
    torch.mul(x.narrow(dim, 0, length), taps[0], out=out)
    for k in range(1, len(taps)):
        out.add_(x.narrow(dim, k, length), alpha=taps[k])
    return out


class _SSIMBuffers:
    """Work tensors for the SSIM of ``(..., H, W)`` maps, allocated once and reused map after map (large fresh
    allocations cost page faults that rival the arithmetic on CPU). ``stats`` keeps its zero border.

    Four statistics are blurred, ``x``, ``y``, ``x^2 + y^2`` and ``xy``: the formula needs only the sum of the
    variances, and blurring is linear (one blur fewer than 3DGS's five, same values up to float32 rounding)."""

    def __init__(self, like: torch.Tensor, padded: bool, window: SSIMWindow):
        *lead, h, w = like.shape
        pad = window.radius if padded else 0
        crop = 2 * (window.radius - pad)
        self.pad, self.window = pad, window
        self.stats = like.new_zeros((4, *lead, h + 2 * pad, w + 2 * pad))
        self.rows = like.new_empty((4, *lead, h + 2 * pad, w - crop))
        self.blurred = like.new_empty((4, *lead, h - crop, w - crop))
        self.product = like.new_empty((*lead, h - crop, w - crop))

    def ssim(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """SSIM map of ``x`` and ``y`` (float32, one per map, channels not averaged), valid until the next call:
        ``(2 mu_x mu_y + C1)(2 cov_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(var_x + var_y + C2))``."""
        h, w = x.shape[-2:]
        inner = self.stats[..., self.pad:self.pad + h, self.pad:self.pad + w]
        inner[0], inner[1] = x, y
        torch.mul(x, x, out=inner[2]).addcmul_(y, y)
        torch.mul(x, y, out=inner[3])
        taps, c1, c2 = self.window.taps, self.window.c1, self.window.c2
        _correlate(self.stats, taps, -1, self.rows)
        mu_x, mu_y, e_squares, e_xy = _correlate(self.rows, taps, -2, self.blurred)
        mean_term = torch.mul(mu_x, mu_y, out=self.product)
        covariance_term = e_xy.sub_(mean_term).mul_(2).add_(c2)
        mean_term.mul_(2).add_(c1)
        variance_term = e_squares.addcmul_(mu_x, mu_x, value=-1).addcmul_(mu_y, mu_y, value=-1).add_(c2)
        mean_sq_term = mu_x.square_().addcmul_(mu_y, mu_y).add_(c1)
        return mean_term.mul_(covariance_term).div_(mean_sq_term.mul_(variance_term))


def ssim_map(render: torch.Tensor, gt: torch.Tensor, padded: bool = True,
             window: SSIMWindow = SSIM_WINDOW) -> torch.Tensor:
    """SSIM map averaged over channels, ``(B, H, W)`` when ``padded`` (3DGS) else the border-cropped
    ``(B, H - 2r, W - 2r)`` (scikit-image). Computed in float32, as 3DGS does.

    On devices in :data:`SSIM_PER_MAP_DEVICES` one image channel is done at a time, so the blurred
    statistics stay in cache; elsewhere the whole batch at once."""
    x, y = render.float(), gt.float()
    if render.device.type not in SSIM_PER_MAP_DEVICES:
        return _SSIMBuffers(x, padded, window).ssim(x, y).mean(1)
    b, c = x.shape[:2]
    buffers = _SSIMBuffers(x[0, 0], padded, window)
    out = x.new_zeros((b, *buffers.product.shape))
    for i in range(b):
        for j in range(c):
            out[i] += buffers.ssim(x[i, j], y[i, j])
    return out.div_(c)


def ssim(render: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM, 3DGS style (zero-padded 11x11 Gaussian window, mean of the whole map), ``(B,)``."""
    return ssim_map(render, gt, padded=True).double().mean((1, 2))


def ssim_unpadded(render: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM over window positions inside the image (scikit-image's crop), ``(B,)``."""
    return ssim_map(render, gt, padded=False).double().mean((1, 2))


# --------------------------------------------------------------------------------------------------------------
# Region-aware scores
# --------------------------------------------------------------------------------------------------------------


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``(B, H, W)`` ``values`` over the True pixels of ``mask`` per image, NaN where none."""
    weights = mask.to(torch.float64)
    count = weights.sum((1, 2))
    total = (values.double() * weights).sum((1, 2))
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def _crop_border(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return mask[..., radius:mask.shape[-2] - radius, radius:mask.shape[-1] - radius]


def _identity(values: torch.Tensor) -> torch.Tensor:
    return values


class RegionMetric(NamedTuple):
    """How a metric is scored over a region: a per-pixel map, the border the map lacks (cropped from the mask
    too), and what turns the mean of the map into the score."""

    per_pixel: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    border: int
    from_mean: Callable[[torch.Tensor], torch.Tensor]

    def score(self, values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The score from an already computed map, over ``mask`` (``(B, H, W)`` bool) or the whole map."""
        mean = values.double().mean((1, 2)) if mask is None else masked_mean(values, _crop_border(mask, self.border))
        return self.from_mean(mean)


REGION_METRICS: dict[str, RegionMetric] = {
    "psnr": RegionMetric(squared_error_map, 0, psnr_from_mse),
    "ssim": RegionMetric(functools.partial(ssim_map, padded=True), 0, _identity),
    "ssim_unpadded": RegionMetric(functools.partial(ssim_map, padded=False), SSIM_WINDOW.radius, _identity),
}
"""Metrics that also get ``<name>_covered`` / ``<name>_uncovered`` scores when a coverage mask is given."""


def region_score(metric: str, render: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``metric`` over the pixels of ``mask`` (``(B, H, W)`` bool) only, ``(B,)``, NaN where ``mask`` is empty:
    PSNR from the MSE over those pixels, SSIM as the mean of its map over them (never by zeroing the rest)."""
    spec = REGION_METRICS[metric]
    return spec.score(spec.per_pixel(render, gt), mask)


# --------------------------------------------------------------------------------------------------------------
# LPIPS
# --------------------------------------------------------------------------------------------------------------


class LpipsWeightsMissing(FileNotFoundError):
    """A torchvision backbone file LPIPS needs is in none of the folders searched."""


def lpips_search_dirs(weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for backbone files, in order: ``weights_dir``, ``$GFBENCH_LPIPS_WEIGHTS``, torch's hub
    cache (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``)."""
    dirs = [Path(d).expanduser() for d in (weights_dir, os.environ.get(LPIPS_WEIGHTS_ENV)) if d]
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def _check_net(net: str) -> None:
    if net not in LPIPS_BACKBONE_FILES:
        raise ValueError(f"unknown LPIPS network {net!r}; known: {', '.join(LPIPS_BACKBONE_FILES)}")


def downloads_allowed() -> bool:
    return os.environ.get(NO_DOWNLOAD_ENV, "").strip().lower() in ("", "0", "false", "no", "off")


def _download(url: str, path: Path, hash_prefix: str, timeout: float) -> None:
    """torch.hub's download (temporary file, sha256 prefix check, then a rename) with a network timeout,
    which ``download_url_to_file`` lacks on its own."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_prefix, progress=True)
    finally:
        socket.setdefaulttimeout(previous)


def _found_backbone(net: str, weights_dir: str | os.PathLike | None) -> Path | None:
    _check_net(net)
    name = LPIPS_BACKBONE_FILES[net]
    return next((folder / name for folder in lpips_search_dirs(weights_dir) if (folder / name).is_file()), None)


def _missing(net: str, weights_dir: str | os.PathLike | None, why: str) -> LpipsWeightsMissing:
    name = LPIPS_BACKBONE_FILES[net]
    arch = "vgg16" if net == "vgg" else "alexnet"
    dirs = ", ".join(str(d) for d in lpips_search_dirs(weights_dir))
    return LpipsWeightsMissing(
        f"LPIPS-{net} needs torchvision's ImageNet {arch} weights {name!r}, not found in: {dirs}; {why}. Run "
        f"`gfbench weights fetch` where the network is reachable, or copy {name} (from "
        f"{LPIPS_DOWNLOAD_URL.format(name=name)}, or an existing torch hub cache) into one of those folders, or "
        f"name its folder with --lpips-weights DIR or ${LPIPS_WEIGHTS_ENV}."
    )


def fetch_lpips_backbone(net: str, weights_dir: str | os.PathLike | None = None,
                         timeout: float = LPIPS_DOWNLOAD_TIMEOUT_S) -> Path:
    """The backbone file of ``net``: found where :func:`lpips_search_dirs` look, else downloaded into torch's
    hub cache (``$TORCH_HOME/hub/checkpoints``) from torchvision's address with its sha256 prefix checked.
    Raises :class:`LpipsWeightsMissing` when downloads are off or fail, saying why and what to do."""
    found = _found_backbone(net, weights_dir)
    if found is not None:
        return found
    if not downloads_allowed():
        raise _missing(net, weights_dir, f"downloads are off (${NO_DOWNLOAD_ENV} is set)")
    name = LPIPS_BACKBONE_FILES[net]
    url = LPIPS_DOWNLOAD_URL.format(name=name)
    target = Path(torch.hub.get_dir()) / "checkpoints" / name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _download(url, target, name.rsplit("-", 1)[1].split(".")[0], timeout)
    except Exception as exc:  # noqa: BLE001 - DNS, connection, timeout, HTTP, disk and hash errors alike
        raise _missing(net, weights_dir, f"downloading {url} failed ({type(exc).__name__}: {exc})") from exc
    if not target.is_file():
        raise _missing(net, weights_dir, f"downloading {url} left no file at {target}")
    return target


def find_lpips_backbone(net: str, weights_dir: str | os.PathLike | None = None) -> Path:
    """Path of torchvision's ImageNet backbone file for ``net`` ("vgg" or "alex"), downloaded first when it is
    in none of the folders searched (see :func:`fetch_lpips_backbone`)."""
    return fetch_lpips_backbone(net, weights_dir)


def lpips_linear_path(net: str) -> Path:
    """The LPIPS v0.1 linear-layer weights shipped inside the ``lpips`` package."""
    _check_net(net)
    import lpips

    return Path(lpips.__file__).resolve().parent / "weights" / "v0.1" / f"{net}.pth"


@functools.lru_cache(maxsize=None)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file, cached per (path, size, mtime)."""
    stat = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def is_published_backbone(net: str, sha256: str) -> bool:
    """Whether a backbone's sha256 starts with the prefix torchvision puts in its file name."""
    return sha256.startswith(LPIPS_BACKBONE_FILES[net].rsplit("-", 1)[1].split(".")[0])


def lpips_weight_hashes(nets: Sequence[str] = ("vgg", "alex"),
                        weights_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """sha256 of the backbone and linear weights each LPIPS network would load, for results to record:
    ``{"lpips_vgg_backbone_sha256": ..., "lpips_vgg_linear_sha256": ..., ...}``."""
    hashes = {}
    for net in dict.fromkeys(nets):
        hashes[f"lpips_{net}_backbone_sha256"] = sha256_file(find_lpips_backbone(net, weights_dir))
        hashes[f"lpips_{net}_linear_sha256"] = sha256_file(lpips_linear_path(net))
    return hashes


def _backbone_state_dict(model_net: torch.nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """``path``'s torchvision ``features.<i>.<param>`` tensors under lpips' ``slice<k>.<i>.<param>`` keys."""
    source = torch.load(path, map_location="cpu", weights_only=True)
    mapped = {}
    for key in model_net.state_dict():
        _, index, param = key.split(".")
        tv_key = f"features.{index}.{param}"
        if tv_key not in source:
            raise ValueError(f"{path}: not a torchvision backbone state_dict (no {tv_key!r})")
        mapped[key] = source[tv_key]
    return mapped


def _linear_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The package's ``lin<k>.model.1.weight`` tensors, also under their ``lins.<k>`` aliases."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {**state, **{"lins." + key[3:]: value for key, value in state.items() if key.startswith("lin")}}


@functools.lru_cache(maxsize=None)
def _load_lpips_cached(net: str, device: str, backbone: str) -> torch.nn.Module:
    import lpips

    digest = sha256_file(backbone)
    if not is_published_backbone(net, digest):
        warnings.warn(f"LPIPS-{net} backbone {backbone} (sha256 {digest[:12]}...) is not torchvision's published "
                      f"{LPIPS_BACKBONE_FILES[net]}: LPIPS values are not comparable to published ones",
                      stacklevel=3)
    # Built on the meta device: nothing is initialised (VGG's random init alone takes seconds) and torchvision
    # downloads nothing (pnet_rand). Every tensor is then set from files, checked by the strict load below.
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore", UserWarning)  # torchvision's 'pretrained' deprecation notes
        model = lpips.LPIPS(net=net, version="0.1", pretrained=False, pnet_rand=True, verbose=False)
    model.to_empty(device="cpu")
    state = {f"net.{k}": v for k, v in _backbone_state_dict(model.net, Path(backbone)).items()}
    state.update(_linear_state_dict(lpips_linear_path(net)))
    state.update({f"scaling_layer.{k}": v for k, v in lpips.lpips.ScalingLayer().state_dict().items()})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"LPIPS-{net}: weights do not fit the lpips model: {exc}") from None
    return model.eval().requires_grad_(False).to(device)


def load_lpips(net: str, device: str | torch.device = "cpu",
               weights_dir: str | os.PathLike | None = None) -> torch.nn.Module:
    """An ``lpips.LPIPS`` model for ``net`` with local weights, cached per (net, device, backbone file).
    Warns (once per model) when the backbone is not torchvision's published file: values then differ from
    published ones."""
    backbone = find_lpips_backbone(net, weights_dir)
    return _load_lpips_cached(net, str(torch.device(device)), str(backbone.resolve()))


def lpips_valid_mean(metric: str, render: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor,
                     weights_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """An LPIPS ``metric`` as the mean of its spatial map over the ``(B, H, W)`` ``valid`` pixels, ``(B,)``."""
    net, map_to_signed = LPIPS_NETS[metric], metric != "lpips_vgg_3dgs"
    model = load_lpips(net, render.device, weights_dir)
    model.spatial = True
    try:
        with torch.inference_mode():
            maps = torch.cat([model(r.float(), g.float(), normalize=map_to_signed)[:, 0]
                              for r, g in zip(render.split(1), gt.split(1))])
    finally:
        model.spatial = False
    return masked_mean(maps, valid)


def _lpips(net: str, map_to_signed: bool, render: torch.Tensor, gt: torch.Tensor,
           weights_dir: str | os.PathLike | None) -> torch.Tensor:
    model = load_lpips(net, render.device, weights_dir)
    chunk = LPIPS_CPU_CHUNK if render.device.type == "cpu" else render.shape[0]
    with torch.inference_mode():
        values = [model(r.float(), g.float(), normalize=map_to_signed).flatten()
                  for r, g in zip(render.split(chunk), gt.split(chunk))]
    return torch.cat(values).double()


def lpips_vgg_3dgs(render: torch.Tensor, gt: torch.Tensor,
                   weights_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """LPIPS-VGG with [0, 1] inputs passed on unmapped (3DGS's ``lpips(..., net_type='vgg')``), ``(B,)``."""
    return _lpips("vgg", False, render, gt, weights_dir)


def lpips_vgg(render: torch.Tensor, gt: torch.Tensor,
              weights_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """Standard LPIPS-VGG: inputs mapped from [0, 1] to [-1, 1], ``(B,)``."""
    return _lpips("vgg", True, render, gt, weights_dir)


def lpips_alex(render: torch.Tensor, gt: torch.Tensor,
               weights_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """Standard LPIPS-AlexNet: inputs mapped from [0, 1] to [-1, 1], ``(B,)``."""
    return _lpips("alex", True, render, gt, weights_dir)


LPIPS_NETS = {"lpips_vgg_3dgs": "vgg", "lpips_vgg": "vgg", "lpips_alex": "alex"}
"""The LPIPS metrics and the backbone each one loads."""


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------


class Metric(NamedTuple):
    fn: Callable[..., torch.Tensor]
    higher_is_better: bool


METRICS: dict[str, Metric] = {
    "psnr": Metric(psnr, True),
    "ssim": Metric(ssim, True),
    "ssim_unpadded": Metric(ssim_unpadded, True),
    "lpips_vgg_3dgs": Metric(lpips_vgg_3dgs, False),
    "lpips_vgg": Metric(lpips_vgg, False),
    "lpips_alex": Metric(lpips_alex, False),
}
"""Metric name -> (batched function ``(render, gt) -> (B,)``, higher_is_better). LPIPS functions also take
``weights_dir``."""


def region_metric_names(metric: str) -> list[str]:
    """Names of the region-aware scores ``metric`` produces with a coverage mask (none for LPIPS)."""
    return [f"{metric}_{region}" for region in REGIONS] if metric in REGION_METRICS else []


def higher_is_better(name: str) -> bool:
    """Arrow direction for a metric or a region-aware score (``psnr_covered`` goes up like ``psnr``)."""
    for base in METRICS:
        if name == base or name in region_metric_names(base):
            return METRICS[base].higher_is_better
    raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")


def check_metrics(metrics: Sequence[str]) -> list[str]:
    """``metrics`` as a list, after checking every name is in :data:`METRICS`."""
    if isinstance(metrics, str):
        metrics = [metrics]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown))}; known: {', '.join(METRICS)}")
    return list(metrics)


def lpips_hashes_for(metrics: Sequence[str], weights_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """:func:`lpips_weight_hashes` for the LPIPS networks ``metrics`` use (empty when none)."""
    nets = [LPIPS_NETS[m] for m in check_metrics(metrics) if m in LPIPS_NETS]
    return lpips_weight_hashes(nets, weights_dir) if nets else {}


# --------------------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------------------


def _stack_quantized(images: Sequence[np.ndarray] | np.ndarray, mode: str, what: str) -> np.ndarray:
    quantized = [quantize(image, mode) for image in images]
    for i, image in enumerate(quantized):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{what}[{i}]: expected an HxWx3 image, got shape {image.shape}")
        if image.shape != quantized[0].shape:
            raise ValueError(f"{what}[{i}]: shape {image.shape} differs from {what}[0] {quantized[0].shape}; "
                             "score differently sized images separately")
    return np.stack(quantized)


def _coverage_tensor(coverages: Sequence[np.ndarray], shape: tuple[int, int], device: str) -> torch.Tensor:
    masks = [np.asarray(m) for m in coverages]
    for i, mask in enumerate(masks):
        if mask.shape != shape:
            raise ValueError(f"coverage[{i}]: shape {mask.shape}, expected {shape} (HxW of the images)")
    return torch.from_numpy(np.stack(masks).astype(bool)).to(device)


def _score_metric(metric: str, render: torch.Tensor, gt: torch.Tensor, coverage: torch.Tensor | None,
                  masked: torch.Tensor, lpips_weights: str | os.PathLike | None,
                  valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``{metric: (B,)}``, plus ``{metric}_covered`` / ``_uncovered`` for the images ``masked`` indexes (their
    masks: ``coverage``) when ``metric`` is region-aware: the per-pixel map is computed once for all three.
    ``valid`` (``(B, H, W)``, given when some image has pixels without a source) limits every score to it."""
    holes = None if valid is None else ~valid.flatten(1).all(1)
    if metric in LPIPS_NETS:
        scores = METRICS[metric].fn(render, gt, weights_dir=lpips_weights)
        if holes is not None:
            scores[holes] = lpips_valid_mean(metric, render[holes], gt[holes], valid[holes], lpips_weights)
        return {metric: scores}
    if metric not in REGION_METRICS:
        return {metric: METRICS[metric].fn(render, gt)}
    spec = REGION_METRICS[metric]
    values = spec.per_pixel(render, gt)
    scores = {metric: spec.score(values) if valid is None else spec.score(values, valid)}
    if coverage is not None:
        inside = torch.ones_like(coverage) if valid is None else valid[masked]
        for region, mask in zip(REGIONS, (coverage & inside, ~coverage & inside)):
            scores[f"{metric}_{region}"] = spec.score(values[masked], mask)
    return scores


def _valid_tensor(valids, render_u8: np.ndarray, gt_u8: np.ndarray, device: str) -> torch.Tensor | None:
    """``(B, H, W)`` validity of every image (None when every pixel of every image is valid); the render's
    invalid pixels take the ground truth's values (in place) so that no difference is seen there."""
    if valids is None or all(v is None for v in valids):
        return None
    if len(valids) != len(render_u8):
        raise ValueError(f"{len(valids)} validity masks for {len(render_u8)} images (use None for frames without)")
    shape = render_u8.shape[1:3]
    masks = np.ones(render_u8.shape[:3], bool)
    for i, mask in enumerate(valids):
        if mask is None:
            continue
        if np.shape(mask) != shape:
            raise ValueError(f"valid[{i}]: shape {np.shape(mask)}, expected {shape} (HxW of the images)")
        masks[i] = np.asarray(mask, bool)
        render_u8[i][~masks[i]] = gt_u8[i][~masks[i]]
    return None if masks.all() else torch.from_numpy(masks).to(device)


def score_batch(renders: Sequence[np.ndarray] | np.ndarray, gts: Sequence[np.ndarray] | np.ndarray,
                metrics: Sequence[str], coverages: Sequence[np.ndarray | None] | np.ndarray | None = None,
                quantize: str = "truncate", device: str = "cpu",
                lpips_weights: str | os.PathLike | None = None,
                valids: Sequence[np.ndarray | None] | None = None) -> list[dict[str, float]]:
    """Score equally sized HxWx3 renders (float in [0, 1] or uint8) against ground truth (uint8 or float), one
    dict per image. Both are quantized with ``quantize`` first. A coverage mask (bool HxW) given for an image
    adds ``<metric>_covered`` / ``<metric>_uncovered`` scores for PSNR and SSIM metrics. A validity mask (bool
    HxW) given for an image leaves its False pixels unscored (see the module docstring)."""
    metrics = check_metrics(metrics)
    if len(renders) != len(gts):
        raise ValueError(f"{len(renders)} renders but {len(gts)} ground-truth images")
    if len(renders) == 0:
        return []
    render_u8 = _stack_quantized(renders, quantize, "render")
    gt_u8 = _stack_quantized(gts, quantize, "gt")
    if render_u8.shape != gt_u8.shape:
        raise ValueError(f"render size {render_u8.shape[1:]} differs from ground truth {gt_u8.shape[1:]}")
    if coverages is not None and len(coverages) != len(renders):
        raise ValueError(f"{len(coverages)} coverage masks for {len(renders)} images (use None for frames without)")
    masked = [i for i, m in enumerate(coverages if coverages is not None else []) if m is not None]
    valid = _valid_tensor(valids, render_u8, gt_u8, device)
    with torch.inference_mode():
        render, gt = to_tensor(render_u8, device), to_tensor(gt_u8, device)
        coverage = _coverage_tensor([coverages[i] for i in masked], render_u8.shape[1:3], device) if masked else None
        masked_index = torch.tensor(masked, dtype=torch.long, device=render.device)
        scores = {}
        for metric in metrics:
            scores.update(_score_metric(metric, render, gt, coverage, masked_index, lpips_weights, valid))
    results = [{} for _ in range(len(render_u8))]
    for name, values in scores.items():
        rows = range(len(results)) if name in metrics else masked
        for i, value in zip(rows, values.tolist()):
            results[i][name] = float(value)
    return results


def score_image(render: np.ndarray, gt: np.ndarray, metrics: Sequence[str], coverage: np.ndarray | None = None,
                quantize: str = "truncate", device: str = "cpu",
                lpips_weights: str | os.PathLike | None = None, valid: np.ndarray | None = None) -> dict[str, float]:
    """Score one HxWx3 render against its ground truth; see :func:`score_batch`."""
    coverages = None if coverage is None else [coverage]
    return score_batch([render], [gt], metrics, coverages, quantize, device, lpips_weights,
                       None if valid is None else [valid])[0]
