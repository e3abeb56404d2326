"""The metrics module: PSNR, the two SSIMs, LPIPS, quantization, region-aware scores and `gfbench evaluate`.

Oracles: hand-computed PSNR, scikit-image for the border-cropped SSIM, an explicit scipy correlation with zero
padding for 3DGS's SSIM, numpy by hand for region scores. LPIPS runs on random-initialised torchvision
backbones written to a temporary folder (no real weights can be downloaded here), so only its properties are
tested, not the published values.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import urllib.error

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage
from skimage import data, filters
from skimage.metrics import structural_similarity

from gfbench import metrics as M
from gfbench.cli.evaluate import evaluate

pytestmark = pytest.mark.filterwarnings("ignore:LPIPS-.*backbone:UserWarning")

RNG = np.random.default_rng(1234)


def noisy(image_u8: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Float [0, 1] copy of ``image_u8`` with Gaussian noise (clipped)."""
    rng = np.random.default_rng(seed)
    return np.clip(image_u8 / 255.0 + rng.normal(0, sigma, image_u8.shape), 0, 1)


def photo_pairs():
    """(name, ground truth uint8, distorted float) on scikit-image's bundled photographs."""
    for name in ("astronaut", "coffee", "chelsea"):
        gt = getattr(data, name)()
        blurred = filters.gaussian(gt / 255.0, sigma=1.2, channel_axis=-1)
        yield name, gt, np.clip(blurred + np.random.default_rng(7).normal(0, 0.03, gt.shape), 0, 1)


def tensor(image_u8: np.ndarray) -> torch.Tensor:
    return M.to_tensor(image_u8[None])


# --------------------------------------------------------------------------------------------------------------
# Independent SSIM reference (float64, explicit 2-D window, scipy correlation)
# --------------------------------------------------------------------------------------------------------------


def reference_window() -> np.ndarray:
    x = np.arange(11) - 5
    g = np.exp(-(x**2) / (2 * 1.5**2))
    w = np.outer(g, g)
    return w / w.sum()


def reference_ssim_map(a_u8: np.ndarray, b_u8: np.ndarray) -> np.ndarray:
    """3DGS SSIM map (zero "same" padding) averaged over channels, by scipy.ndimage.correlate in float64."""
    window = reference_window()
    maps = []
    for c in range(3):
        x, y = a_u8[..., c] / 255.0, b_u8[..., c] / 255.0
        blur = lambda z: ndimage.correlate(z, window, mode="constant", cval=0.0)  # noqa: E731
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        c1, c2 = 0.01**2, 0.03**2
        maps.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return np.mean(maps, axis=0)


# --------------------------------------------------------------------------------------------------------------
# Quantization
# --------------------------------------------------------------------------------------------------------------


def test_quantize_truncates_by_default_and_rounds_on_request():
    x = np.array([[[0.0, 0.5, 0.999], [1.0, 1.5, -0.2], [np.nan, np.inf, -np.inf]]], dtype=np.float32)
    assert M.quantize(x).tolist() == [[[0, 127, 254], [255, 255, 0], [0, 255, 0]]]
    assert M.quantize(x, "round").tolist() == [[[0, 128, 255], [255, 255, 0], [0, 255, 0]]]
    assert np.isnan(x[0, 2, 0]) and x[0, 1, 1] == 1.5  # the input is left alone


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", M.QUANTIZE_MODES)
def test_eight_bit_values_read_as_n_over_255_survive_quantization(dtype, mode):
    levels = np.arange(256)
    assert np.array_equal(M.quantize(levels.astype(dtype) / dtype(255), mode), levels)


def test_quantize_keeps_uint8_and_rejects_other_inputs():
    image = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    assert M.quantize(image, "round") is image
    with pytest.raises(ValueError, match="truncate, round"):
        M.quantize(image, "nearest")
    with pytest.raises(TypeError, match="uint16"):
        M.quantize(image.astype(np.uint16))


def test_quantize_mode_changes_the_score():
    gt = np.full((16, 16, 3), 128, np.uint8)
    render = np.full((16, 16, 3), 128.7 / 255)  # truncates to 128, rounds to 129
    assert M.score_image(render, gt, ["psnr"])["psnr"] == math.inf
    assert M.score_image(render, gt, ["psnr"], quantize="round")["psnr"] == pytest.approx(20 * math.log10(255))


# --------------------------------------------------------------------------------------------------------------
# PSNR
# --------------------------------------------------------------------------------------------------------------


def test_psnr_of_a_constant_offset():
    gt = np.zeros((8, 12, 3), np.uint8)
    render = np.full((8, 12, 3), 10, np.uint8)
    assert M.score_image(render, gt, ["psnr"])["psnr"] == pytest.approx(20 * math.log10(255 / 10), abs=1e-6)


def test_psnr_of_mixed_errors_per_image():
    gt = np.full((2, 4, 4, 3), 100, np.uint8)
    render = gt.copy()
    render[0, :2] += 2  # half the pixels off by 2/255: MSE = (2/255)^2 / 2
    render[1, 0, 0, 0] = 0  # one value off by 100/255 among 48: MSE = (100/255)^2 / 48
    scores = M.score_batch(render, gt, ["psnr"])
    assert scores[0]["psnr"] == pytest.approx(10 * math.log10(255**2 * 2 / 4), abs=1e-6)
    assert scores[1]["psnr"] == pytest.approx(10 * math.log10(255**2 * 48 / 100**2), abs=1e-6)


def test_psnr_tensor_function_is_batched():
    a = torch.rand(3, 3, 10, 10)
    b = (a + 0.1 * torch.arange(1, 4).view(3, 1, 1, 1)).clamp(0, 1)
    values = M.psnr(a, b)
    for i in range(3):
        mse = ((a[i].double() - b[i].double()) ** 2).mean()
        assert values[i].item() == pytest.approx(-10 * math.log10(mse), rel=1e-9)


# --------------------------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------------------------


def test_ssim_window_is_the_protocol_window():
    assert (M.SSIM_WINDOW.size, M.SSIM_WINDOW.sigma) == (11, 1.5)
    assert (M.SSIM_WINDOW.c1, M.SSIM_WINDOW.c2) == pytest.approx((1e-4, 9e-4))
    taps = np.array(M.SSIM_WINDOW.taps)
    assert np.allclose(np.outer(taps, taps), reference_window(), atol=1e-15)


@pytest.mark.parametrize("name, gt, render", list(photo_pairs()), ids=lambda v: v if isinstance(v, str) else "")
def test_ssim_unpadded_matches_scikit_image(name, gt, render):
    render_u8 = M.quantize(render)
    expected = structural_similarity(render_u8 / 255.0, gt / 255.0, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=1, channel_axis=-1)
    got = M.score_image(render, gt, ["ssim_unpadded"])["ssim_unpadded"]
    assert got == pytest.approx(expected, abs=1e-4)
    assert 0.3 < got < 0.99  # a real, imperfect match


@pytest.mark.parametrize("name, gt, render", list(photo_pairs()), ids=lambda v: v if isinstance(v, str) else "")
def test_ssim_matches_an_explicit_zero_padded_correlation(name, gt, render):
    gt, render_u8 = gt[:96, :128], M.quantize(render)[:96, :128]
    expected_map = reference_ssim_map(render_u8, gt)
    got_map = M.ssim_map(tensor(render_u8), tensor(gt), padded=True)[0].numpy()
    # float32 (as 3DGS computes it) against float64: E[x^2] - E[x]^2 loses ~1e-7, divided by ~C2 in flat areas
    assert np.abs(got_map - expected_map).max() < 3e-4
    assert M.score_image(render_u8, gt, ["ssim"])["ssim"] == pytest.approx(expected_map.mean(), abs=1e-5)


def test_ssim_and_ssim_unpadded_differ_only_by_the_border():
    gt = data.chelsea()[:80, :100]
    render = M.quantize(noisy(gt, 0.1))
    padded = M.ssim_map(tensor(render), tensor(gt), padded=True)[0]
    cropped = M.ssim_map(tensor(render), tensor(gt), padded=False)[0]
    assert cropped.shape == (70, 90)
    assert torch.allclose(padded[5:-5, 5:-5], cropped, atol=1e-6)
    scores = M.score_image(render, gt, ["ssim", "ssim_unpadded"])
    assert abs(scores["ssim"] - scores["ssim_unpadded"]) > 1e-3


def test_ssim_per_channel_and_whole_batch_paths_agree(monkeypatch):
    gt = np.stack([data.astronaut()[:40, :56], data.coffee()[:40, :56]])
    render = np.stack([M.quantize(noisy(g, 0.1, seed=i)) for i, g in enumerate(gt)])
    x, y = M.to_tensor(render), M.to_tensor(gt)
    per_map = {padded: M.ssim_map(x, y, padded) for padded in (True, False)}
    monkeypatch.setattr(M, "SSIM_PER_MAP_DEVICES", ())
    for padded, expected in per_map.items():
        assert torch.allclose(M.ssim_map(x, y, padded), expected, atol=1e-6)
    assert torch.allclose(M.ssim_map(x, y)[1], torch.from_numpy(reference_ssim_map(render[1], gt[1])).float(),
                          atol=3e-4)


def test_ssim_of_identical_images_is_one_and_drops_with_noise():
    gt = data.astronaut()[:64, :64]
    assert M.score_image(gt, gt, ["ssim"])["ssim"] == pytest.approx(1.0, abs=1e-6)
    values = [M.score_image(noisy(gt, s), gt, ["ssim"])["ssim"] for s in (0.02, 0.1, 0.3)]
    assert values[0] > values[1] > values[2]


# --------------------------------------------------------------------------------------------------------------
# Region-aware scores
# --------------------------------------------------------------------------------------------------------------


def coverage_mask(shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[10 : shape[0] // 2, 20 : shape[1] // 2 + 7] = True
    return mask


@pytest.fixture(scope="module")
def region_case():
    gt = data.coffee()[:120, :160]
    render = noisy(gt, 0.05)
    render[:60] = np.clip(render[:60] + 0.1, 0, 1)  # larger error in the top half, partly covered
    mask = coverage_mask(gt.shape[:2])
    metrics = ["psnr", "ssim", "ssim_unpadded"]
    return gt, M.quantize(render), mask, M.score_image(render, gt, metrics, coverage=mask)


def test_region_mses_recombine_to_the_full_mse(region_case):
    gt, render, mask, scores = region_case
    mse = lambda p: 10 ** (-p / 10)  # noqa: E731
    n_covered, n_total = mask.sum(), mask.size
    recombined = (n_covered * mse(scores["psnr_covered"]) + (n_total - n_covered) * mse(scores["psnr_uncovered"]))
    assert recombined / n_total == pytest.approx(mse(scores["psnr"]), rel=1e-9)
    assert scores["psnr_covered"] != pytest.approx(scores["psnr_uncovered"], abs=0.1)


def test_region_psnr_uses_only_the_region_pixels(region_case):
    gt, render, mask, scores = region_case
    for region, pixels in (("covered", mask), ("uncovered", ~mask)):
        diff = (render[pixels].astype(float) - gt[pixels].astype(float)) / 255
        assert scores[f"psnr_{region}"] == pytest.approx(-10 * math.log10(np.mean(diff**2)), abs=1e-6)


def test_region_ssim_is_the_mean_of_the_map_over_the_region(region_case):
    gt, render, mask, scores = region_case
    full_map = reference_ssim_map(render, gt)
    assert scores["ssim_covered"] == pytest.approx(full_map[mask].mean(), abs=1e-5)
    assert scores["ssim_uncovered"] == pytest.approx(full_map[~mask].mean(), abs=1e-5)
    inner, inner_mask = full_map[5:-5, 5:-5], mask[5:-5, 5:-5]
    assert scores["ssim_unpadded_covered"] == pytest.approx(inner[inner_mask].mean(), abs=1e-5)
    # not the same as zeroing the other region and scoring whole images
    zeroed = M.score_image(np.where(mask[..., None], render, 0), np.where(mask[..., None], gt, 0), ["ssim"])
    assert abs(zeroed["ssim"] - scores["ssim_covered"]) > 1e-2


def test_tensor_region_score_matches_score_image(region_case):
    gt, render, mask, scores = region_case
    x, y, m = tensor(render), tensor(gt), torch.from_numpy(mask)[None]
    for metric in M.REGION_METRICS:
        assert M.region_score(metric, x, y, m).item() == pytest.approx(scores[f"{metric}_covered"], rel=1e-9)
        assert M.region_score(metric, x, y, ~m).item() == pytest.approx(scores[f"{metric}_uncovered"], rel=1e-9)


def test_empty_region_gives_nan_and_no_coverage_gives_no_region_scores():
    gt = data.astronaut()[:32, :32]
    render = noisy(gt, 0.05)
    full = M.score_image(render, gt, ["psnr", "ssim"], coverage=np.ones((32, 32), bool))
    assert math.isnan(full["psnr_uncovered"]) and math.isnan(full["ssim_uncovered"])
    assert full["psnr_covered"] == pytest.approx(full["psnr"], rel=1e-12)
    assert set(M.score_image(render, gt, ["psnr", "ssim"])) == {"psnr", "ssim"}


def test_batch_with_some_masks_scores_regions_only_where_given():
    gt = np.stack([data.astronaut()[:40, :48]] * 3)
    renders = [noisy(g, 0.05, seed=i) for i, g in enumerate(gt)]
    mask = coverage_mask((40, 48))
    batch = M.score_batch(renders, gt, ["psnr", "ssim"], coverages=[None, mask, ~mask])
    assert "psnr_covered" not in batch[0]
    assert batch[1]["psnr_covered"] == pytest.approx(M.score_image(renders[1], gt[1], ["psnr"], mask)["psnr_covered"])
    assert batch[2]["ssim_uncovered"] == pytest.approx(M.score_image(renders[2], gt[2], ["ssim"], mask)["ssim_covered"])
    for i in range(3):
        single = M.score_image(renders[i], gt[i], ["psnr", "ssim"])
        assert batch[i]["psnr"] == pytest.approx(single["psnr"]) and batch[i]["ssim"] == pytest.approx(single["ssim"])


def test_shape_errors_name_the_shapes():
    gt = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        M.score_image(gt, gt, ["psnr"], coverage=np.ones((8, 9), bool))
    with pytest.raises(ValueError, match="differs"):
        M.score_image(np.zeros((8, 9, 3)), gt, ["psnr"])
    with pytest.raises(ValueError, match="HxWx3"):
        M.score_image(np.zeros((8, 8)), np.zeros((8, 8)), ["psnr"])
    with pytest.raises(ValueError, match="2 coverage masks for 1 images"):
        M.score_batch([gt], [gt], ["psnr"], coverages=[None, None])


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------


def test_registry_directions_and_unknown_names():
    assert M.higher_is_better("psnr") and M.higher_is_better("ssim_unpadded")
    assert not M.higher_is_better("lpips_vgg_3dgs") and not M.higher_is_better("lpips_alex")
    assert M.higher_is_better("psnr_covered") and M.higher_is_better("ssim_uncovered")
    fn, higher = M.METRICS["ssim"]
    assert fn is M.ssim and higher
    with pytest.raises(ValueError, match="known: psnr, ssim, ssim_unpadded, lpips_vgg_3dgs"):
        M.score_image(np.zeros((8, 8, 3)), np.zeros((8, 8, 3), np.uint8), ["psnr", "msssim"])
    with pytest.raises(ValueError, match="lpips_vgg_covered"):
        M.higher_is_better("lpips_vgg_covered")


# --------------------------------------------------------------------------------------------------------------
# LPIPS (random backbones)
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lpips_weights_dir(tmp_path_factory):
    """torchvision vgg16 / alexnet feature weights, random (seeded), saved under torchvision's file names, plus
    a dummy classifier entry as full checkpoints have (built on the meta device: no time spent initialising
    the large classifiers)."""
    from torchvision.models import alexnet, vgg16

    folder = tmp_path_factory.mktemp("lpips_weights")
    torch.manual_seed(0)
    for net, build in {"vgg": vgg16, "alex": alexnet}.items():
        with torch.device("meta"):
            features = build().features
        features = features.to_empty(device="cpu")
        for module in features.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.reset_parameters()
        state = {f"features.{k}": v for k, v in features.state_dict().items()}
        state["classifier.6.bias"] = torch.zeros(1000)
        torch.save(state, folder / M.LPIPS_BACKBONE_FILES[net])
    return folder


@pytest.fixture
def lpips_env(lpips_weights_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(M.LPIPS_WEIGHTS_ENV, str(lpips_weights_dir))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty hub cache
    return lpips_weights_dir


LPIPS_METRICS = ["lpips_vgg_3dgs", "lpips_vgg", "lpips_alex"]


@pytest.fixture(scope="module")
def small_pair():
    gt = data.astronaut()[100:164:2, 150:230:2]  # 32x40
    return gt, M.quantize(noisy(gt, 0.1))


def test_lpips_is_zero_on_identical_images(lpips_env, small_pair):
    gt, _ = small_pair
    scores = M.score_image(gt, gt, LPIPS_METRICS)
    assert all(abs(scores[m]) < 1e-6 for m in LPIPS_METRICS)


def test_lpips_is_symmetric_and_the_3dgs_variant_differs(lpips_env, small_pair):
    gt, render = small_pair
    forward, backward = M.score_image(render, gt, LPIPS_METRICS), M.score_image(gt, render, LPIPS_METRICS)
    for m in LPIPS_METRICS:
        assert forward[m] > 0 and forward[m] == pytest.approx(backward[m], rel=1e-5)
    assert abs(forward["lpips_vgg_3dgs"] - forward["lpips_vgg"]) > 1e-3 * forward["lpips_vgg"]


def test_lpips_grows_with_distortion(lpips_env, small_pair):
    gt, _ = small_pair
    renders = [noisy(gt, s, seed=3) for s in (0.02, 0.08, 0.25)]
    scores = M.score_batch(renders, [gt] * 3, LPIPS_METRICS)
    for m in LPIPS_METRICS:
        assert scores[0][m] < scores[1][m] < scores[2][m], m


def test_lpips_loads_the_backbone_from_the_file_and_caches_the_model(lpips_env):
    model = M.load_lpips("alex")
    saved = torch.load(lpips_env / M.LPIPS_BACKBONE_FILES["alex"], map_location="cpu", weights_only=True)
    loaded = model.net.state_dict()
    assert torch.equal(loaded["slice1.0.weight"], saved["features.0.weight"])
    assert torch.equal(loaded["slice5.10.bias"], saved["features.10.bias"])
    linear = torch.load(M.lpips_linear_path("alex"), map_location="cpu", weights_only=True)
    assert torch.equal(model.lin0.model[-1].weight, linear["lin0.model.1.weight"])
    assert torch.equal(model.lins[4].model[-1].weight, linear["lin4.model.1.weight"])
    assert torch.allclose(model.scaling_layer.shift.flatten(), torch.tensor([-0.030, -0.088, -0.188]))
    assert torch.allclose(model.scaling_layer.scale.flatten(), torch.tensor([0.458, 0.448, 0.450]))
    assert M.load_lpips("alex") is model


def test_lpips_warns_when_the_backbone_is_not_the_published_file(lpips_env, tmp_path):
    name = M.LPIPS_BACKBONE_FILES["alex"]
    (tmp_path / name).write_bytes((lpips_env / name).read_bytes())  # a file no model was built from yet
    with pytest.warns(UserWarning, match="not torchvision's published alexnet-owt-7be5be79.pth"):
        M.load_lpips("alex", weights_dir=tmp_path)
    assert M.is_published_backbone("alex", "7be5be79" + "0" * 56)
    assert not M.is_published_backbone("vgg", "7be5be79" + "0" * 56)


def test_lpips_weight_hashes_are_the_files_sha256(lpips_env):
    hashes = M.lpips_hashes_for(["psnr", "lpips_vgg_3dgs", "lpips_vgg"])
    assert set(hashes) == {"lpips_vgg_backbone_sha256", "lpips_vgg_linear_sha256"}
    backbone = (lpips_env / "vgg16-397923af.pth").read_bytes()
    assert hashes["lpips_vgg_backbone_sha256"] == hashlib.sha256(backbone).hexdigest()
    linear = M.lpips_linear_path("vgg").read_bytes()
    assert hashes["lpips_vgg_linear_sha256"] == hashlib.sha256(linear).hexdigest()
    assert M.lpips_hashes_for(["psnr", "ssim"]) == {}


def test_missing_lpips_weights_fail_at_once_without_downloading(tmp_path, monkeypatch):
    empty = tmp_path / "no_weights"
    empty.mkdir()
    monkeypatch.setenv(M.LPIPS_WEIGHTS_ENV, str(empty))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_download(*args, **kwargs):
        raise AssertionError("attempted a download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    gt = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(M.LpipsWeightsMissing) as info:
        M.score_image(gt, gt, ["lpips_vgg_3dgs"])
    message = str(info.value)
    assert "vgg16-397923af.pth" in message and str(empty) in message
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in message
    assert "--lpips-weights" in message and M.LPIPS_WEIGHTS_ENV in message
    with pytest.raises(M.LpipsWeightsMissing, match="alexnet-owt-7be5be79.pth"):
        M.lpips_hashes_for(["lpips_alex"])


def test_lpips_rejects_a_file_that_is_not_a_backbone(tmp_path, monkeypatch):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "alexnet-owt-7be5be79.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(ValueError, match="not a torchvision backbone"):
        M.load_lpips("alex", weights_dir=tmp_path)


# --------------------------------------------------------------------------------------------------------------
# LPIPS weights: fetched into torch's hub cache (a fake downloader stands in for the network)
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """No backbone anywhere, downloads allowed; returns the hub cache folder a download goes to."""
    empty = tmp_path / "no_weights"
    empty.mkdir()
    monkeypatch.setenv(M.LPIPS_WEIGHTS_ENV, str(empty))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(M.NO_DOWNLOAD_ENV, raising=False)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def test_a_missing_backbone_is_downloaded_into_the_hub_cache_once(no_weights, lpips_weights_dir, monkeypatch):
    calls = []

    def fake_download(url, path, hash_prefix, timeout):
        calls.append((url, path, hash_prefix, timeout))
        shutil.copy(lpips_weights_dir / path.name, path)

    monkeypatch.setattr(M, "_download", fake_download)
    path = M.find_lpips_backbone("vgg")
    assert path == no_weights / "vgg16-397923af.pth"
    assert calls == [("https://download.pytorch.org/models/vgg16-397923af.pth", path, "397923af",
                      M.LPIPS_DOWNLOAD_TIMEOUT_S)]
    assert M.find_lpips_backbone("vgg") == path and len(calls) == 1  # found in the cache from now on
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert M.lpips_hashes_for(["lpips_vgg_3dgs"])["lpips_vgg_backbone_sha256"] == digest


def test_a_failed_download_says_why_and_what_to_do(no_weights, monkeypatch):
    def unreachable(url, path, hash_prefix, timeout):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(M, "_download", unreachable)
    with pytest.raises(M.LpipsWeightsMissing) as info:
        M.lpips_hashes_for(["lpips_alex"])
    message = str(info.value)
    assert "downloading https://download.pytorch.org/models/alexnet-owt-7be5be79.pth failed (URLError" in message
    assert "Name or service not known" in message and "gfbench weights fetch" in message
    assert str(no_weights) in message and "--lpips-weights" in message
    assert not (no_weights / "alexnet-owt-7be5be79.pth").exists()


def test_downloads_off_never_reach_the_downloader(no_weights, monkeypatch):
    monkeypatch.setenv(M.NO_DOWNLOAD_ENV, "1")
    monkeypatch.setattr(M, "_download", lambda *args: pytest.fail("downloaded although downloads are off"))
    with pytest.raises(M.LpipsWeightsMissing, match=r"downloads are off \(\$GFBENCH_NO_DOWNLOAD is set\)"):
        M.find_lpips_backbone("vgg")


def test_the_real_download_gives_up_on_a_server_that_never_answers(tmp_path):
    """torch.hub's own download, through gfbench's timeout, against a local socket that accepts and never
    replies (a fresh interpreter, so a hang would end in the subprocess timeout rather than the test run)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        code = ("import sys\nfrom gfbench import metrics as M\n"
                f"M.LPIPS_DOWNLOAD_URL = 'http://127.0.0.1:{silent.getsockname()[1]}/{{name}}'\n"
                "try:\n    M.fetch_lpips_backbone('alex', timeout=0.5)\n"
                "except M.LpipsWeightsMissing as e:\n    print(e); sys.exit(3)\n")
        env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch_home"), M.LPIPS_WEIGHTS_ENV: str(tmp_path)}
        env.pop(M.NO_DOWNLOAD_ENV, None)
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert "failed" in result.stdout and "timed out" in result.stdout
    assert not list((tmp_path / "torch_home").rglob("*.pth"))


def test_cli_weights_fetch(no_weights, lpips_weights_dir, monkeypatch):
    from gfbench.cli import main

    monkeypatch.setattr(M, "_download", lambda url, path, prefix, timeout: shutil.copy(lpips_weights_dir / path.name,
                                                                                        path))
    result = CliRunner().invoke(main, ["weights", "fetch", "--net", "alex"])
    assert result.exit_code == 0, result.output
    digest = hashlib.sha256((no_weights / "alexnet-owt-7be5be79.pth").read_bytes()).hexdigest()
    assert f"alex: {no_weights / 'alexnet-owt-7be5be79.pth'}  sha256 {digest}  (not torchvision's published file)" \
        in result.output
    monkeypatch.setenv(M.NO_DOWNLOAD_ENV, "1")
    result = CliRunner().invoke(main, ["weights", "fetch"])
    assert result.exit_code == 1 and "alex: " in result.output and "vgg16-397923af.pth" in result.output
    assert "downloads are off" in result.output


# --------------------------------------------------------------------------------------------------------------
# Pixels without a source (validity masks)
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def holed_pair():
    gt = data.astronaut()[100:164, 150:230]  # 64x80
    render = M.quantize(noisy(gt, 0.1, seed=5))
    valid = np.ones(gt.shape[:2], bool)
    valid[:6, :] = valid[:, -9:] = False  # an undistorted frame's unsourced border
    return gt, render, valid


def test_pixels_without_a_source_are_never_scored(holed_pair):
    gt, render, valid = holed_pair
    coverage = np.zeros_like(valid)
    coverage[20:50, 10:60] = True
    names = ["psnr", "ssim", "ssim_unpadded"]
    base = M.score_image(render, gt, names, coverage=coverage, valid=valid)
    other = render.copy()
    other[~valid] = 255 - other[~valid]  # anything at all where there is no source
    assert M.score_image(other, gt, names, coverage=coverage, valid=valid) == base
    error = (render.astype(np.float64) - gt) / 255
    assert base["psnr"] == pytest.approx(-10 * np.log10(np.mean(error[valid] ** 2)), abs=1e-5)  # float32 maps
    assert base["psnr_uncovered"] == pytest.approx(-10 * np.log10(np.mean(error[valid & ~coverage] ** 2)), abs=1e-5)
    # SSIM over the valid pixels: the map of the render with the ground truth put where there is no source
    filled = render.copy()
    filled[~valid] = gt[~valid]
    ssim_map = M.ssim_map(M.to_tensor(filled[None]), M.to_tensor(gt[None]))[0].numpy()
    assert base["ssim"] == pytest.approx(ssim_map[valid].mean(), abs=1e-6)
    whole = M.score_image(render, gt, names)
    assert whole["psnr"] != pytest.approx(base["psnr"], abs=1e-3)


def test_lpips_averages_its_map_over_the_valid_pixels(lpips_env, holed_pair):
    gt, render, valid = holed_pair
    base = M.score_image(render, gt, LPIPS_METRICS, valid=valid)
    other = render.copy()
    other[~valid] = 0
    assert M.score_image(other, gt, LPIPS_METRICS, valid=valid) == pytest.approx(base, rel=1e-6)
    everywhere = np.ones_like(valid)
    assert M.score_image(render, gt, LPIPS_METRICS, valid=everywhere) == M.score_image(render, gt, LPIPS_METRICS)
    model = M.load_lpips("vgg")
    model.spatial = True
    try:
        filled = render.copy()
        filled[~valid] = gt[~valid]
        with torch.inference_mode():
            spatial = model(M.to_tensor(filled[None]), M.to_tensor(gt[None]), normalize=False)[0, 0].numpy()
    finally:
        model.spatial = False
    assert base["lpips_vgg_3dgs"] == pytest.approx(spatial[valid].mean(), rel=1e-5)


def test_runner_scores_test_views_within_their_mask(holed_pair):
    from gfbench import runner
    from gfbench.camera import Camera, intrinsics
    from gfbench.protocols import Split
    from gfbench.views import View

    gt, render, valid = holed_pair
    h, w = valid.shape
    view = View("f.png", 0, gt, Camera(intrinsics(50, 50, w / 2, h / 2), np.eye(4), w, h), mask=valid)
    split = Split(train=[], test=[view], points=None, info={})
    suite = type("Suite", (), {"metrics": ("psnr",), "quantize": "truncate"})()
    other = render.copy()
    other[~valid] = 0
    scores = [runner.score_views(split, [image.astype(np.float32) / 255], suite, "cpu")[0]["psnr"]
              for image in (render, other)]
    assert scores[0] == scores[1] == M.score_image(render, gt, ["psnr"], valid=valid)["psnr"]


# --------------------------------------------------------------------------------------------------------------
# gfbench evaluate
# --------------------------------------------------------------------------------------------------------------


def write_folder(folder, images: dict[str, np.ndarray], suffix: str = ".png"):
    folder.mkdir(exist_ok=True)
    for stem, image in images.items():
        Image.fromarray(image).save(folder / f"{stem}{suffix}")
    return folder


@pytest.fixture
def folders(tmp_path):
    gt = {f"frame_{i:03d}": data.chelsea()[i * 20 : i * 20 + 48, 100:164] for i in range(3)}
    renders = {stem: M.quantize(noisy(image, 0.05, seed=i)) for i, (stem, image) in enumerate(gt.items())}
    return write_folder(tmp_path / "renders", renders), write_folder(tmp_path / "gt", gt), renders, gt


def test_evaluate_scores_folders_and_writes_json(folders, tmp_path):
    renders_dir, gt_dir, renders, gt = folders
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(evaluate, ["--renders", str(renders_dir), "--gt", str(gt_dir),
                                           "--metrics", "psnr,ssim", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert all(stem in result.output for stem in gt) and "mean" in result.output and "psnr ↑" in result.output
    saved = json.loads(out.read_text())
    for stem in gt:
        expected = M.score_image(renders[stem], gt[stem], ["psnr", "ssim"])
        assert saved["per_image"][stem] == pytest.approx(expected)
    mean_psnr = np.mean([saved["per_image"][s]["psnr"] for s in gt])
    assert saved["mean"]["psnr"] == pytest.approx(mean_psnr)
    assert saved["quantize"] == "truncate" and saved["weights"] == {}


def test_evaluate_writes_csv_with_coverage_columns(folders, tmp_path):
    renders_dir, gt_dir, renders, gt = folders
    masks = {stem: (coverage_mask((48, 64)) * 255).astype(np.uint8) for stem in gt}
    coverage_dir = write_folder(tmp_path / "coverage", masks)
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(evaluate, ["--renders", str(renders_dir), "--gt", str(gt_dir), "--metrics", "psnr",
                                           "--coverage", str(coverage_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0] == "image,psnr,psnr_covered,psnr_uncovered"
    assert [line.split(",")[0] for line in lines[1:]] == sorted(gt) + ["mean"]
    stem = sorted(gt)[1]
    expected = M.score_image(renders[stem], gt[stem], ["psnr"], coverage=coverage_mask((48, 64)))
    assert [float(v) for v in lines[2].split(",")[1:]] == pytest.approx(
        [expected["psnr"], expected["psnr_covered"], expected["psnr_uncovered"]])


def test_evaluate_reports_missing_counterparts(folders):
    renders_dir, gt_dir, _, _ = folders
    (renders_dir / "frame_001.png").unlink()
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(renders_dir / "extra.jpg")
    result = CliRunner().invoke(evaluate, ["--renders", str(renders_dir), "--gt", str(gt_dir), "--metrics", "psnr"])
    assert result.exit_code != 0
    assert "extra.jpg" in result.output and "frame_001.png" in result.output


def test_evaluate_reports_size_mismatches(folders):
    renders_dir, gt_dir, _, _ = folders
    Image.fromarray(np.zeros((40, 64, 3), np.uint8)).save(renders_dir / "frame_002.png")
    result = CliRunner().invoke(evaluate, ["--renders", str(renders_dir), "--gt", str(gt_dir), "--metrics", "psnr"])
    assert result.exit_code != 0
    assert "size mismatch" in result.output
    assert str(renders_dir / "frame_002.png") in result.output and "64x40" in result.output
    assert str(gt_dir / "frame_002.png") in result.output and "64x48" in result.output


def test_evaluate_rejects_unknown_metrics_and_missing_lpips_weights(folders, tmp_path, monkeypatch):
    renders_dir, gt_dir, _, _ = folders
    args = ["--renders", str(renders_dir), "--gt", str(gt_dir)]
    result = CliRunner().invoke(evaluate, args + ["--metrics", "psnr,fid"])
    assert result.exit_code != 0 and "'fid'" in result.output and "lpips_alex" in result.output
    monkeypatch.delenv(M.LPIPS_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    result = CliRunner().invoke(evaluate, args + ["--lpips-weights", str(tmp_path)])
    assert result.exit_code != 0 and "vgg16-397923af.pth" in result.output and str(tmp_path) in result.output


def test_evaluate_lpips_with_a_weights_folder(folders, lpips_weights_dir, tmp_path, monkeypatch):
    renders_dir, gt_dir, renders, gt = folders
    monkeypatch.delenv(M.LPIPS_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(evaluate, ["--renders", str(renders_dir), "--gt", str(gt_dir), "--out", str(out),
                                           "--lpips-weights", str(lpips_weights_dir)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["metrics"] == ["psnr", "ssim", "lpips_vgg_3dgs"]
    assert set(saved["weights"]) == {"lpips_vgg_backbone_sha256", "lpips_vgg_linear_sha256"}
    stem = sorted(gt)[0]
    expected = M.score_image(renders[stem], gt[stem], ["lpips_vgg_3dgs"], lpips_weights=lpips_weights_dir)
    assert saved["per_image"][stem]["lpips_vgg_3dgs"] == pytest.approx(expected["lpips_vgg_3dgs"])


# ---------------------------------------------------------------- gfbench evaluate: bad files, --out, 16-bit PNGs


def png16_bytes(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG (grayscale HxW or RGB HxWx3), written here by hand with zlib: an encoder independent of
    the decoder under test."""
    import struct
    import zlib

    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = pixels.reshape(height, width * channels).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 16, {1: 0, 3: 2}[channels], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


@functools.lru_cache(maxsize=None)
def exact_table(mode: str) -> np.ndarray:
    """The oracle: floor(255 v / 65535 (+ 1/2)) for every 16-bit v, in exact rational arithmetic."""
    from fractions import Fraction
    from math import floor

    half = Fraction(1, 2) if mode == "round" else 0
    return np.array([floor(Fraction(255 * v, 65535) + half) for v in range(65536)], np.uint8)


def exact_quantize(values: np.ndarray, mode: str) -> np.ndarray:
    return exact_table(mode)[values]


@pytest.mark.parametrize("mode", ["truncate", "round"])
def test_16bit_values_are_quantized_exactly(mode):
    from gfbench.cli.evaluate import quantize_16bit

    every = np.arange(65536, dtype=np.uint16)
    np.testing.assert_array_equal(quantize_16bit(every, mode), exact_quantize(every, mode))
    assert quantize_16bit(np.array([65280], np.uint16), "truncate")[0] == 254  # Pillow's v // 256 gives 255


def test_evaluate_scores_16bit_pngs_after_exact_quantization(tmp_path):
    rng = np.random.default_rng(3)
    gt16 = rng.integers(0, 65536, (12, 16, 3), dtype=np.uint16)
    render16 = np.clip(gt16.astype(np.int64) + rng.integers(-3000, 3000, gt16.shape), 0, 65535).astype(np.uint16)
    gray16 = rng.integers(0, 65536, (12, 16), dtype=np.uint16)
    (tmp_path / "renders").mkdir()
    (tmp_path / "gt").mkdir()
    (tmp_path / "renders" / "a.png").write_bytes(png16_bytes(render16))
    (tmp_path / "gt" / "a.png").write_bytes(png16_bytes(gt16))
    (tmp_path / "renders" / "b.png").write_bytes(png16_bytes(gray16))
    gray_gt = exact_quantize(np.repeat(gray16[..., None], 3, 2), "round")  # an 8-bit ground truth
    Image.fromarray(gray_gt).save(tmp_path / "gt" / "b.png")
    for mode in ("truncate", "round"):
        out = tmp_path / f"{mode}.json"
        result = CliRunner().invoke(evaluate, ["--renders", str(tmp_path / "renders"), "--gt", str(tmp_path / "gt"),
                                               "--metrics", "psnr,ssim", "--quantize", mode, "--out", str(out)])
        assert result.exit_code == 0, result.output
        saved = json.loads(out.read_text())["per_image"]
        expected = M.score_image(exact_quantize(render16, mode), exact_quantize(gt16, mode), ["psnr", "ssim"])
        assert saved["a"] == pytest.approx(expected)
        gray = M.score_image(exact_quantize(np.repeat(gray16[..., None], 3, 2), mode), gray_gt, ["psnr", "ssim"])
        assert saved["b"]["ssim"] == pytest.approx(gray["ssim"])
        if mode == "round":  # the 8-bit ground truth was made with the same rounding: a perfect match
            assert saved["b"]["psnr"] is None and gray["psnr"] == math.inf
        else:
            assert saved["b"]["psnr"] == pytest.approx(gray["psnr"])


def test_evaluate_names_unreadable_and_truncated_images(folders, tmp_path):
    renders_dir, gt_dir, _, _ = folders
    args = ["--renders", str(renders_dir), "--gt", str(gt_dir), "--metrics", "psnr"]
    (renders_dir / "frame_000.png").write_text("not an image")
    result = CliRunner().invoke(evaluate, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"Error: {renders_dir / 'frame_000.png'}: not a readable image" in result.output
    whole = (gt_dir / "frame_001.png").read_bytes()
    (renders_dir / "frame_000.png").write_bytes(whole)
    (gt_dir / "frame_001.png").write_bytes(whole[: len(whole) // 2])
    result = CliRunner().invoke(evaluate, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"Error: {gt_dir / 'frame_001.png'}: not a readable image (missing, truncated" in result.output
    (gt_dir / "frame_001.png").write_bytes(png16_bytes(np.zeros((48, 64, 3), np.uint16))[:60])
    result = CliRunner().invoke(evaluate, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"{gt_dir / 'frame_001.png'}: not a readable image" in result.output


def test_evaluate_creates_the_out_folder_and_refuses_one_it_cannot_make(folders, tmp_path):
    renders_dir, gt_dir, _, _ = folders
    args = ["--renders", str(renders_dir), "--gt", str(gt_dir), "--metrics", "psnr"]
    out = tmp_path / "new" / "deeper" / "scores.csv"
    result = CliRunner().invoke(evaluate, args + ["--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("image,psnr")
    (tmp_path / "a-file").write_text("")
    result = CliRunner().invoke(evaluate, args + ["--out", str(tmp_path / "a-file" / "scores.csv")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"Error: {tmp_path / 'a-file'}: cannot create the folder for --out" in result.output
    assert "frame_000" not in result.output  # refused before any scoring was printed
