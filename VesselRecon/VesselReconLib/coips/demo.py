"""The COIPS part of ``vesselrecon demo``: a small generated study and the sample image in the scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import GRADES

DEMO_SEED, DEMO_IMAGES, DEMO_SIZE = 5150, 6, 304


def write_study(folder: Path, count: int = DEMO_IMAGES, size: int = DEMO_SIZE, seed: int = DEMO_SEED) -> dict[str, int]:
    """PNG phantoms cycling through the three grades; returns ``{file name: true grade}``."""
    from PIL import Image

    from ..phantoms.octa import render_octa

    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for index in range(count):
        grade_index = (2, 1, 0)[index % 3]
        case = render_octa(seed + index, size, 3.0, quality=grade_index)
        name = f"study_{index:02d}_3x3.png"
        Image.fromarray((case.image * 255).astype(np.uint8)).save(folder / name)
        truth[name] = grade_index
    return truth


def contact_sheet(thumbnail_folder: Path, names: list[str], columns: int = 3) -> np.ndarray:
    """The overlay thumbnails tiled into one RGB float image."""
    from PIL import Image

    tiles = [np.asarray(Image.open(thumbnail_folder / name).convert("RGB"), np.float32) / 255 for name in names]
    while len(tiles) % columns:
        tiles.append(np.ones_like(tiles[0]))
    rows = [np.concatenate(tiles[i:i + columns], axis=1) for i in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)


def run_demo(context) -> dict:
    """Run the batch and single-image paths; write ``coips_report.png``; return summary metrics."""
    from .. import mrml
    from ..render import save_image_png
    from .logic import COIPSLogic

    out = Path(context.out) / "coips"
    truth = write_study(out / "study")
    logic = COIPSLogic(context.scene)
    batch = logic.process_batch(out / "study", out / "report", fieldOfViewMm=3.0, device=context.device,
                                numWorkers=0)
    correct = [row["grade"] == GRADES[truth[Path(row["image"]).name]] for row in batch.rows]
    sample = logic.load_sample()
    result = logic.process(sample.inputVolume, 3.0, device=context.device)
    summary = {"study_images": len(batch.rows), "study_grade_accuracy": float(np.mean(correct)),
               "sample_grade": result.grade, "report": str(batch.htmlPath)}
    if result.outputSegmentation is not None:
        evaluation = logic.evaluate(result.outputSegmentation, sample.referenceSegmentation)
        metrics = {row["metric"]: row["value"] for row in mrml.table_to_rows(evaluation)}
        summary.update(sample_faz_dice=round(float(metrics["dice"]), 4),
                       sample_faz_area_mm2=round(float(metrics["faz_area_mm2"]), 4),
                       sample_faz_area_error_mm2=round(float(metrics["faz_area_error_mm2"]), 4))
    thumbs = [row["thumbnail"] for row in batch.rows if row.get("thumbnail")]
    save_image_png(contact_sheet(out / "report" / "thumbnails", thumbs), context.render_path("coips_report"))
    return summary
