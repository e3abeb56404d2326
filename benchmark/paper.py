"""The GenFusion supplement's Tables 1-4, as transcribed under ``leaderboards/paper/`` (see its README).

Each table is a long CSV: ``table, suite, scene, method, metric, value``. Values keep the digits the paper
printed (read as text first, so the number of decimals tells how much rounding a value carries); the paper's
printed suite averages are rows with ``scene == "average"``. Method names are the paper's ("3DGS", "Ours");
:data:`PAPER_METHODS` maps them to gfbench's method names.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

PAPER_TABLES = {
    1: "table1_ablation_tnt.csv",
    2: "table2_dl3dv_masked.csv",
    3: "table3_tnt_masked.csv",
    4: "table4_mipnerf360_sparse.csv",
}
"""Table number -> file name under ``leaderboards/paper/``."""

PAPER_METHODS = {"3DGS": "3dgs", "2DGS": "2dgs", "FSGS": "fsgs", "Ours": "genfusion"}
"""Paper method name -> gfbench method name (Table 1's ablation rows have none)."""

AVERAGE = "average"
"""The scene name of a printed suite average."""

COLUMNS = ["table", "suite", "scene", "method", "metric", "value"]


def paper_dir() -> Path:
    """``leaderboards/paper/`` of the checkout this package lives in, else the copy a wheel installs as
    ``gfbench/_paper``."""
    package_dir = Path(__file__).resolve().parent
    checkout = package_dir.parent / "leaderboards" / "paper"
    return checkout if checkout.is_dir() else package_dir / "_paper"


def decimals(text: str) -> int:
    """Digits after the decimal point of a printed number ("0.83" -> 2, "17" -> 0)."""
    return len(text.partition(".")[2])


def half_unit(text: str) -> float:
    """Largest rounding error of a printed number: half a unit of its last digit."""
    return 0.5 * 10.0 ** -decimals(text)


def load_table(number: int, directory: Path | None = None) -> pd.DataFrame:
    """One paper table: the CSV's columns, ``value`` as float, ``printed`` as the transcribed text."""
    path = (directory or paper_dir()) / PAPER_TABLES[number]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: paper table {number} not found; the paper tables live in the "
                                "checkout's leaderboards/paper/ folder")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(frame.columns) != COLUMNS:
        raise ValueError(f"{path}: columns {list(frame.columns)}, expected {COLUMNS}")
    frame["table"] = frame["table"].astype(int)
    frame["printed"] = frame["value"]
    frame["value"] = frame["printed"].astype(float)
    return frame


def load_tables(directory: Path | None = None) -> pd.DataFrame:
    """All four tables in one long frame."""
    return pd.concat([load_table(n, directory) for n in PAPER_TABLES], ignore_index=True)


def paper_results(suite_id: str, directory: Path | None = None) -> pd.DataFrame:
    """The paper's numbers for a suite, methods renamed to gfbench's (rows of unmapped methods dropped):
    columns ``table, scene, method, metric, value, printed``. Empty when the paper has no table for it."""
    tables = load_tables(directory)
    rows = tables[(tables["suite"] == suite_id) & tables["method"].isin(list(PAPER_METHODS))].copy()
    rows["method"] = rows["method"].map(PAPER_METHODS)
    return rows.drop(columns="suite").reset_index(drop=True)


def average_check(table: pd.DataFrame) -> pd.DataFrame:
    """Each printed average against the mean of the printed per-scene values of its (suite, method, metric).

    Columns: ``suite, method, metric, printed, mean, difference, tolerance, consistent``. The tolerance is what
    rounding alone allows: half a unit of the printed average plus the mean of half a unit of each scene value
    (a PSNR average over 2-decimal values may be off by up to 0.01, an SSIM average by up to 0.001).
    Tables without per-scene rows (Table 1) give no rows.
    """
    rows = []
    for (suite, method, metric), group in table.groupby(["suite", "method", "metric"], sort=False):
        scenes = group[group["scene"] != AVERAGE]
        average = group[group["scene"] == AVERAGE]
        if scenes.empty or average.empty:
            continue
        printed = average["printed"].iloc[0]
        mean = scenes["value"].mean()
        tolerance = half_unit(printed) + scenes["printed"].map(half_unit).mean()
        difference = mean - float(printed)
        rows.append({
            "suite": suite, "method": method, "metric": metric, "printed": float(printed), "mean": mean,
            "difference": difference, "tolerance": tolerance,
            "consistent": abs(difference) <= tolerance + 1e-9,
        })
    return pd.DataFrame(rows, columns=["suite", "method", "metric", "printed", "mean", "difference",
                                       "tolerance", "consistent"])
