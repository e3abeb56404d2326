"""``gfbench evaluate``: score a folder of rendered images against a folder of ground truth.

Images (PNG or JPEG) are matched by file stem, so any method's renders can be scored without porting it. Every
render needs a ground truth of the same size and vice versa; anything else is an error naming the files.
8-bit images are scored as they are; a 16-bit PNG (RGB or grayscale) holds ``v / 65535`` and is quantized to
uint8 exactly as a float render would be (``--quantize``), in integer arithmetic so that no rounding error
of ``v / 65535`` can move a value across a step. Pillow would keep only the high byte (``v // 256``), so 16-bit
PNGs are decoded with OpenCV.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
from PIL import Image

from gfbench import metrics as M
from gfbench.storage import DiskFull, reporting_disk_full

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_METRICS = "psnr,ssim,lpips_vgg_3dgs"
OUTPUT_SUFFIXES = (".json", ".csv")


class EvaluationError(ValueError):
    """Folders that cannot be scored as given (missing counterparts, size mismatches, unreadable images)."""


@dataclass
class Evaluation:
    metrics: list[str]
    quantize: str
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        """Metric columns in a stable order: requested metrics, then their region-aware scores."""
        seen = {name for row in self.per_image.values() for name in row}
        regions = [r for m in self.metrics for r in M.region_metric_names(m) if r in seen]
        return self.metrics + regions

    def mean(self) -> dict[str, float]:
        """Mean over images per column, ignoring NaN (a region empty in some frames); NaN if none is finite."""
        return {c: _nanmean([row.get(c, math.nan) for row in self.per_image.values()]) for c in self.columns}


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


# --------------------------------------------------------------------------------------------------------------
# Folders and images
# --------------------------------------------------------------------------------------------------------------


def index_images(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` by stem; two images with one stem (``a.png`` and ``a.jpg``) are an error."""
    index: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in index:
            raise EvaluationError(f"{folder}: two images named {path.stem!r}: {index[path.stem].name}, {path.name}")
        index[path.stem] = path
    return index


def _describe(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def match_images(renders_dir: Path, gt_dir: Path) -> list[tuple[str, Path, Path]]:
    """``(stem, render, gt)`` for every image, sorted by stem; unmatched files on either side are an error."""
    renders, gts = index_images(renders_dir), index_images(gt_dir)
    if not renders:
        raise EvaluationError(f"{renders_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    problems = []
    missing_gt = sorted(set(renders) - set(gts))
    missing_render = sorted(set(gts) - set(renders))
    if missing_gt:
        problems.append(f"renders without ground truth in {gt_dir}: {_describe([renders[s].name for s in missing_gt])}")
    if missing_render:
        problems.append(f"ground truth without a render in {renders_dir}: "
                        f"{_describe([gts[s].name for s in missing_render])}")
    if problems:
        raise EvaluationError("; ".join(problems))
    return [(stem, renders[stem], gts[stem]) for stem in sorted(renders)]


def _unreadable(path: Path, exc: BaseException) -> EvaluationError:
    return EvaluationError(f"{path}: not a readable image (missing, truncated or not an image file): {exc}")


def png_bit_depth(path: Path) -> int | None:
    """The bit depth in a PNG's header; None for any other file."""
    with open(path, "rb") as handle:
        head = handle.read(26)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR" or len(head) < 26:
        return None
    return head[24]


def quantize_16bit(values: np.ndarray, mode: str) -> np.ndarray:
    """uint8 of ``v / 65535`` for 16-bit ``values``, truncated or rounded half up as ``metrics.quantize`` does
    with floats, computed exactly: ``floor(255 v / 65535)`` or ``floor(255 v / 65535 + 1/2)``."""
    scaled = values.astype(np.int64) * 255
    if mode == "round":
        return ((2 * scaled + 65535) // (2 * 65535)).astype(np.uint8)
    if mode == "truncate":
        return (scaled // 65535).astype(np.uint8)
    raise ValueError(f"unknown quantize mode {mode!r}; known: {', '.join(M.QUANTIZE_MODES)}")


def _load_16bit_png(path: Path, quantize: str) -> np.ndarray:
    import cv2

    pixels = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.dtype != np.uint16:
        raise EvaluationError(f"{path}: not a readable image (a 16-bit PNG that does not decode: truncated?)")
    if pixels.ndim == 3 and pixels.shape[2] in (2, 4):
        raise EvaluationError(f"{path}: has an alpha channel; composite it onto its background first")
    rgb = np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels[..., ::-1]  # OpenCV is BGR
    return quantize_16bit(np.ascontiguousarray(rgb), quantize)


def load_rgb(path: Path, quantize: str = "truncate") -> np.ndarray:
    """HxWx3 uint8 pixels of an 8-bit RGB or grayscale image, or of a 16-bit PNG quantized with ``quantize``
    (see the module docstring); alpha, other modes and unreadable files are refused naming the file."""
    try:
        if png_bit_depth(path) == 16:
            return _load_16bit_png(path, quantize)
        with Image.open(path) as image:
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                raise EvaluationError(f"{path}: has an alpha channel; composite it onto its background first")
            if image.mode not in ("RGB", "L", "P"):
                raise EvaluationError(f"{path}: unsupported image mode {image.mode!r} (8-bit RGB or grayscale, "
                                      "or a 16-bit PNG)")
            return np.asarray(image.convert("RGB"))
    except EvaluationError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _unreadable(path, exc) from exc


def load_mask(path: Path) -> np.ndarray:
    """HxW bool coverage mask: nonzero pixels are covered."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L") if image.mode not in ("I;16", "I;16B", "I") else image) > 0
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _unreadable(path, exc) from exc


def _check_size(stem: str, pairs: dict[str, tuple[Path, tuple[int, ...]]]) -> None:
    sizes = {what: shape for what, (_, shape) in pairs.items()}
    if len(set(sizes.values())) > 1:
        detail = ", ".join(f"{what} {path} is {shape[1]}x{shape[0]}" for what, (path, shape) in pairs.items())
        raise EvaluationError(f"size mismatch for {stem!r}: {detail}")


# --------------------------------------------------------------------------------------------------------------
# Scoring and output
# --------------------------------------------------------------------------------------------------------------


def evaluate_folders(renders_dir: Path, gt_dir: Path, metrics: list[str], coverage_dir: Path | None = None,
                     quantize: str = "truncate", device: str = "cpu",
                     lpips_weights: Path | None = None) -> Evaluation:
    """Score every render of ``renders_dir`` against the same-stem image of ``gt_dir`` (and, with
    ``coverage_dir``, the same-stem coverage mask)."""
    metrics = M.check_metrics(metrics)
    weights = M.lpips_hashes_for(metrics, lpips_weights)  # fails at once when LPIPS weights are missing
    pairs = match_images(renders_dir, gt_dir)
    masks = _match_masks(coverage_dir, [stem for stem, _, _ in pairs]) if coverage_dir else {}
    result = Evaluation(metrics=metrics, quantize=quantize, weights=weights)
    for stem, render_path, gt_path in pairs:
        render, gt = load_rgb(render_path, quantize), load_rgb(gt_path, quantize)
        coverage = load_mask(masks[stem]) if stem in masks else None
        shapes = {"render": (render_path, render.shape[:2]), "ground truth": (gt_path, gt.shape[:2])}
        if coverage is not None:
            shapes["coverage"] = (masks[stem], coverage.shape)
        _check_size(stem, shapes)
        result.per_image[stem] = M.score_image(render, gt, metrics, coverage, quantize, device, lpips_weights)
    return result


def _match_masks(coverage_dir: Path, stems: list[str]) -> dict[str, Path]:
    masks = index_images(coverage_dir)
    missing = [s for s in stems if s not in masks]
    if missing:
        raise EvaluationError(f"images without a coverage mask in {coverage_dir}: {_describe(missing)}")
    return masks


def format_table(result: Evaluation) -> str:
    """Per-image rows and a final ``mean`` row, aligned columns."""
    columns = result.columns
    rows = [[stem] + [_fmt(scores.get(c, math.nan)) for c in columns] for stem, scores in result.per_image.items()]
    mean = result.mean()
    rows.append(["mean"] + [_fmt(mean[c]) for c in columns])
    header = ["image"] + [f"{c} {'↑' if M.higher_is_better(c) else '↓'}" for c in columns]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in [header] + rows]
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def _json_value(value: float) -> float | None:
    return value if math.isfinite(value) else None


def write_results(path: Path, result: Evaluation) -> None:
    """JSON (``per_image``, ``mean``, settings and weight hashes; non-finite values as null) or CSV (one row
    per image, then ``mean``), chosen by the suffix of ``path``."""
    if path.suffix.lower() == ".json":
        payload = {
            "metrics": result.metrics,
            "quantize": result.quantize,
            "weights": result.weights,
            "per_image": {s: {k: _json_value(v) for k, v in row.items()} for s, row in result.per_image.items()},
            "mean": {k: _json_value(v) for k, v in result.mean().items()},
        }
        path.write_text(json.dumps(payload, indent=2) + "\n")
        return
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image"] + result.columns)
        for stem, scores in result.per_image.items():
            writer.writerow([stem] + [scores.get(c, math.nan) for c in result.columns])
        mean = result.mean()
        writer.writerow(["mean"] + [mean[c] for c in result.columns])


def _parse_metrics(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    try:
        return M.check_metrics(names)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _check_out(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None and value.suffix.lower() not in OUTPUT_SUFFIXES:
        raise click.BadParameter(f"{value}: write .json or .csv")
    return value


_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command("evaluate")
@click.option("--renders", "renders_dir", required=True, type=_DIR, help="Folder of rendered images.")
@click.option("--gt", "gt_dir", required=True, type=_DIR, help="Folder of ground-truth images (same file stems).")
@click.option("--metrics", default=DEFAULT_METRICS, show_default=True, callback=_parse_metrics,
              help=f"Comma-separated metrics, from: {', '.join(M.METRICS)}.")
@click.option("--coverage", "coverage_dir", type=_DIR, default=None,
              help="Folder of coverage masks (same stems, nonzero = covered): adds covered/uncovered PSNR, SSIM.")
@click.option("--lpips-weights", type=_DIR, default=None,
              help=f"Folder holding {', '.join(M.LPIPS_BACKBONE_FILES.values())} (else ${M.LPIPS_WEIGHTS_ENV}, "
                   "else torch's hub cache).")
@click.option("--quantize", type=click.Choice(M.QUANTIZE_MODES), default="truncate", show_default=True,
              help="How float and 16-bit images become uint8 (8-bit files are unchanged either way).")
@click.option("--device", default="cpu", show_default=True, help="torch device for the metrics.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, callback=_check_out,
              help="Write the scores to FILE.json or FILE.csv.")
def evaluate(renders_dir: Path, gt_dir: Path, metrics: list[str], coverage_dir: Path | None,
             lpips_weights: Path | None, quantize: str, device: str, out: Path | None) -> None:
    """Score a folder of renders against ground truth, matched by file stem."""
    if out is not None:
        _make_out_folder(out)
    try:
        result = evaluate_folders(renders_dir, gt_dir, metrics, coverage_dir, quantize, device, lpips_weights)
    except (EvaluationError, M.LpipsWeightsMissing) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_table(result))
    if out is not None:
        try:
            with reporting_disk_full(out, "the scores"):
                write_results(out, result)
        except OSError as exc:
            if isinstance(exc, DiskFull):
                raise click.ClickException(str(exc)) from None
            raise click.ClickException(f"{out}: cannot write the scores: {exc.strerror or exc}") from None
        click.echo(f"wrote {out}")


def _make_out_folder(out: Path) -> None:
    """Create the folder of ``--out`` before scoring, so that a bad path fails before any work."""
    if out.is_dir():
        raise click.BadParameter(f"{out}: is a folder; name a .json or .csv file", param_hint="--out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"{out.parent}: cannot create the folder for --out: {exc.strerror or exc}") from None
