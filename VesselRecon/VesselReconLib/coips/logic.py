"""COIPS Logic: one OCTA image in the scene, or a study folder, to grades, FAZ segments and tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import GRADES
from ..enface_io import fov_choice, normalise
from .. import mrml
from ..errors import CheckpointError, InputError, squeeze_to_2d
from ..logic_base import SEGMENTATION, TABLE, VesselReconLogic

FAZ_SEGMENT = mrml.SegmentSpec(1, "FAZ", (0.95, 0.85, 0.1), terminology=None)
DEFAULT_FAZ_MODEL = "faz-lite"
SAMPLE_SEED, SAMPLE_SIZE, SAMPLE_FOV = 20240, 304, 3.0


@dataclass
class CoipsResult:
    """What :meth:`COIPSLogic.process` made: nodes, grade, probabilities and FAZ metrics."""

    outputTable: object
    outputSegmentation: object | None
    grade: str
    probabilities: dict[str, float]
    metrics: dict[str, float] = field(default_factory=dict)
    flagged: bool = False
    fieldOfViewMm: float = 3.0
    fovSource: str = "config"
    fazFlags: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """What the panel lists under "finished": an ungradable grade without a FAZ, an implausible FAZ."""
        notes = []
        if self.flagged:
            notes.append("graded ungradable: " + ("the FAZ was segmented because it was asked for; treat it with care"
                                                  if self.outputSegmentation is not None else
                                                  "no FAZ was segmented (tick 'FAZ on ungradable images' to force one)"))
        if self.fazFlags:
            notes.append(f"implausible FAZ ({'; '.join(self.fazFlags)}): kept out of study summaries")
        return notes


@dataclass
class CoipsBatchResult:
    """What :meth:`COIPSLogic.process_batch` made: the results table node and the batch result."""

    outputTable: object
    rows: list[dict]
    csvPath: Path
    htmlPath: Path
    summary: dict


@dataclass
class CoipsSample:
    """Nodes made by :meth:`COIPSLogic.load_sample`."""

    inputVolume: object
    referenceSegmentation: object


def fov_from_geometry(ijk_to_ras: np.ndarray, width: int) -> float | None:
    """Scan width from the volume's spacing, unless the spacing is the 1 mm placeholder of plain images."""
    from ..enface_io import PLAUSIBLE_FOV_MM

    spacing = float(mrml.spacing_of(ijk_to_ras)[0])
    fov = spacing * width
    return fov if abs(spacing - 1.0) > 1e-6 and PLAUSIBLE_FOV_MM[0] <= fov <= PLAUSIBLE_FOV_MM[1] else None


def missing_volume_fov_message(name: str) -> str:
    return (f"The field of view of '{name}' is unknown: its pixel spacing is the 1 mm placeholder of plain "
            "image files. Choose 3 mm or 6 mm in the field-of-view selector (fieldOfViewMm=3 or 6), or load a "
            "DICOM/TIFF with its spacing.")


class COIPSLogic(VesselReconLogic):
    """Quality grading, FAZ segmentation and FAZ measurement of OCTA images (OCTA-25K-IQA-SEG).

    Usable from the Python console without the GUI::

        logic = COIPSLogic()
        result = logic.process(volumeNode, fieldOfViewMm=3)
        print(result.grade, result.metrics["faz_area_mm2"])
    """

    method = "coips"
    creator = "COIPS"

    def networks(self, model: str = "lite", fazModel: str = DEFAULT_FAZ_MODEL, device: str = "auto"):
        """``(quality_net, faz_net, torch_device)``; ``model`` may also be a FAZ U-Net checkpoint.

        :raises CheckpointError: unknown preset, missing or mismatching checkpoint.
        """
        from ..device import resolve_device

        first, _ = self.model(model, device)
        if getattr(first, "kind", "") == "faz":
            quality_net, faz_net = self.model("lite", device)[0], first
        else:
            quality_net, faz_net = first, self.model(fazModel, device)[0]
        if getattr(faz_net, "kind", "") != "faz" or getattr(quality_net, "kind", "") != "quality":
            raise CheckpointError("model must name a quality classifier and fazModel a FAZ U-Net "
                                  "(e.g. model='lite', fazModel='faz-lite').")
        return quality_net, faz_net, resolve_device(device)

    def _read_input(self, input_volume, field_of_view_mm: float | None):
        array, ijk_to_ras = self.read_volume(input_volume, "Input volume is missing: select an OCTA image first.")
        if array.ndim == 4 and array.shape[0] == 1:  # a single-slice colour (vector) volume
            array = array[0]
        pixels = normalise(squeeze_to_2d(array, "Input volume"), "Input volume")
        field_of_view_mm = fov_choice(field_of_view_mm)
        if field_of_view_mm is not None:
            return pixels, ijk_to_ras, field_of_view_mm, "config"
        fov = fov_from_geometry(ijk_to_ras, pixels.shape[1])
        if fov is None:
            raise InputError(missing_volume_fov_message(input_volume.GetName()))
        return pixels, ijk_to_ras, fov, "metadata"

    def process(self, inputVolume, fieldOfViewMm: float | None = None, forceFazOnUngradable: bool = False,
                outputSegmentation=None, outputTable=None, model: str = "lite",
                fazModel: str = DEFAULT_FAZ_MODEL, device: str = "auto", progress=None, cancel=None,
                background=None) -> CoipsResult:
        """Grade one OCTA image; segment and measure its FAZ unless it is ungradable (or when forced).

        :param inputVolume: single-slice scalar volume holding an en face OCTA image.
        :param fieldOfViewMm: scan width (3 or 6 mm); ``None`` ("auto") takes it from the volume spacing
            and raises :class:`InputError` when that is the 1 mm placeholder of PNG/JPEG files.
        :param forceFazOnUngradable: segment the FAZ even when the image is graded ungradable.
        :param outputSegmentation: segmentation node to overwrite (default: "<input> FAZ").
        :param outputTable: table node to overwrite (default: "<input> COIPS").
        :param model: quality classifier preset or checkpoint (a FAZ U-Net checkpoint is also accepted).
        :param fazModel: FAZ U-Net preset or checkpoint.
        :param device: ``auto``, ``cuda``, ``mps`` or ``cpu``.
        :param progress: ``progress(fraction, message)``; ``cancel() -> bool`` aborts.
        :param background: ``background(fn)`` runs the MRML-free computation off the GUI thread.
        :returns: :class:`CoipsResult`.
        :raises InputError: missing/invalid input or model, or an image COIPS is not made for (non-square,
            wide- or narrow-field: :func:`.faz.unsuitable_reason`); the scene is left untouched.
        """
        from ..progress import as_reporter
        from .faz import unsuitable_reason
        from .inference import assess

        reporter = as_reporter(progress, cancel)
        self.check_outputs(outputSegmentation=(outputSegmentation, SEGMENTATION), outputTable=(outputTable, TABLE))
        pixels, ijk_to_ras, fov, fov_source = self._read_input(inputVolume, fieldOfViewMm)
        reason = unsuitable_reason(*pixels.shape, fov)   # as the batch: neither graded nor segmented
        if reason:
            raise InputError(f"{inputVolume.GetName()}: {reason}.")
        reporter(0.1, "Loading networks")
        quality_net, faz_net, torch_device = self.networks(model, fazModel, device)
        reporter(0.3, "Grading and segmenting")
        compute = lambda: assess(pixels, fov, quality_net, faz_net, torch_device, forceFazOnUngradable)  # noqa: E731
        assessment = background(compute) if background else compute()
        reporter(0.9, "Writing outputs")
        name = inputVolume.GetName()
        flagged = assessment.grade == GRADES[0]
        rows = self._rows(assessment, fov, fov_source, flagged)
        segmentation = None
        with self.writing(reporter, follow=inputVolume):
            table = mrml.rows_to_table(rows, f"{name} COIPS", node=outputTable, scene=self.scene, creator=self.creator)
            if not assessment.segmented:
                self._clear_stale_segmentation(f"{name} FAZ", outputSegmentation)
            else:
                segmentation = mrml.labelmap_to_segmentation(
                    assessment.mask.astype(np.uint8), ijk_to_ras, [FAZ_SEGMENT], f"{name} FAZ",
                    node=outputSegmentation, reference_volume=inputVolume, scene=self.scene, creator=self.creator)
        reporter(1.0, f"{assessment.grade}" + (" (flagged: FAZ not segmented)" if flagged and not assessment.segmented else ""))
        return CoipsResult(table, segmentation, assessment.grade, assessment.probabilities, assessment.metrics,
                           flagged, fov, fov_source, list(assessment.flags) if assessment.segmented else [])

    def _clear_stale_segmentation(self, name: str, output_segmentation) -> None:
        """Empty the FAZ of an earlier run (ours, or the given output) so that it cannot be mistaken
        for this image's result."""
        nodes = [output_segmentation] if output_segmentation is not None else []
        existing = self.scene.GetNodesByClassByName("vtkMRMLSegmentationNode", name)
        nodes += [existing.GetItemAsObject(i) for i in range(existing.GetNumberOfItems())
                  if existing.GetItemAsObject(i).GetAttribute(mrml.CREATED_BY) == self.creator]
        for node in nodes:
            mrml.will_modify(node)
            node.GetSegmentation().RemoveAllSegments()

    @staticmethod
    def _rows(assessment, fov: float, fov_source: str, flagged: bool) -> list[dict]:
        from .faz import FAZ_METRIC_UNITS

        rows = [{"measure": "grade", "value": assessment.grade, "unit": ""},
                {"measure": "flagged_ungradable", "value": "yes" if flagged else "no", "unit": ""},
                *({"measure": f"p_{g}", "value": f"{p:.3f}", "unit": ""} for g, p in assessment.probabilities.items()),
                {"measure": "field_of_view_mm", "value": f"{fov:g}", "unit": f"mm ({fov_source})"},
                {"measure": "faz_segmented", "value": "forced" if assessment.forced else
                 ("yes" if assessment.segmented else "no"), "unit": ""}]
        if assessment.segmented:
            rows.append({"measure": "faz_plausible", "value": "no" if assessment.flags else "yes",
                         "unit": "; ".join(assessment.flags)})
        rows += [{"measure": key, "value": f"{assessment.metrics[key]:.6g}", "unit": unit}
                 for key, unit in FAZ_METRIC_UNITS.items() if key in assessment.metrics]
        return rows

    def process_batch(self, inputFolder, outputFolder, fieldOfViewMm: float | None = None,
                      forceFazOnUngradable: bool = False, outputTable=None, model: str = "lite",
                      fazModel: str = DEFAULT_FAZ_MODEL, device: str = "auto", numWorkers: int | None = None,
                      batchSize: int = 32, configFile: str | None = None, fovFile: str | None = None,
                      recursive: bool | None = None, postWorkers: int | None = None,
                      progress=None, cancel=None, background=None) -> CoipsBatchResult:
        """Grade, segment and measure every image of a folder; write CSV + HTML report; fill a table node.

        :param inputFolder: folder of PNG/JPEG/BMP/TIFF/DICOM OCTA images.
        :param outputFolder: where the CSV, HTML report, thumbnails and masks go.
        :param fieldOfViewMm: scan width (3 or 6 mm); ``None``: DICOM/TIFF metadata or a 3x3/6x6 token in the path.
        :param forceFazOnUngradable: segment the FAZ of ungradable images too.
        :param outputTable: table node to overwrite (default: "COIPS batch results").
        :param numWorkers: decoding processes (default ``min(2, cores)``).
        :param batchSize: images per forward pass.
        :param configFile: optional YAML configuration; the other arguments override it.
        :param fovFile: CSV of per-file fields of view (``image,field_of_view_mm``), overriding all else.
        :param recursive: include sub-folders; ``postWorkers``: FAZ measuring/writing processes (``None``: the
            configuration file's value, else the defaults).
        :returns: :class:`CoipsBatchResult`.
        :raises InputError: missing folders, no images, bad model; :class:`~VesselReconLib.progress.Cancelled`.
        """
        from .batch import run_batch
        from .config import load_config

        if not inputFolder or not outputFolder:
            raise InputError("Choose both an input folder and an output folder.")
        self.check_outputs(outputTable=(outputTable, TABLE))
        config = load_config(configFile, input=str(inputFolder), output=str(outputFolder),
                             field_of_view_mm=fov_choice(fieldOfViewMm), segment_ungradable=forceFazOnUngradable or None,
                             quality_model=model, faz_model=fazModel, device=device, num_workers=numWorkers,
                             batch_size=batchSize, fov_file=str(fovFile) if fovFile else None, recursive=recursive,
                             post_workers=postWorkers)
        quality_net, faz_net, _ = self.networks(config.quality_model, config.faz_model, config.device)
        compute = lambda: run_batch(config, quality_net, faz_net, progress, cancel)  # noqa: E731
        result = background(compute) if background else compute()
        columns = ("image", "status", "grade", "p_ungradable", "p_gradable", "p_outstanding", "slab", "grade_source",
                   "field_of_view_mm", "fov_source", "faz_segmented", "faz_plausible", "faz_flags", "faz_area_mm2",
                   "faz_perimeter_mm", "faz_circularity", "faz_axis_ratio", "error")
        rows = [{c: _table_value(r.get(c, ""), c) for c in columns} for r in result.rows]
        with self.writing():
            table = mrml.rows_to_table(rows, "COIPS batch results", node=outputTable, scene=self.scene,
                                       creator=self.creator)
        return CoipsBatchResult(table, result.rows, result.csv_path, result.html_path, result.summary)

    def evaluate(self, prediction, reference, table=None, fieldOfViewMm: float | None = None,
                 referenceVolume=None):
        """Dice, Jaccard, precision, recall and FAZ area error (mm^2) of a FAZ segmentation.

        :param prediction: segmentation node (e.g. the output of :meth:`process`).
        :param reference: reference FAZ segmentation node.
        :param table: table node to overwrite.
        :param fieldOfViewMm: scan width for the area (default: from the reference geometry; refused if unknown).
        :param referenceVolume: the image grid both are compared on (default: the segmentations' own).
        :returns: the metrics table node.
        """
        if prediction is None or reference is None:
            raise InputError("Evaluation needs both a predicted and a reference FAZ segmentation.")
        reference_volume = referenceVolume or _geometry_volume(reference) or _geometry_volume(prediction)
        reference_labels, ijk_to_ras = mrml.segmentation_to_labelmap(reference, reference_volume)
        predicted_labels, predicted_geometry = mrml.segmentation_to_labelmap(prediction, reference_volume)
        if predicted_labels.shape != reference_labels.shape or not np.allclose(predicted_geometry, ijk_to_ras):
            raise InputError("The prediction and the reference lie on different grids: pass the input volume as "
                             "referenceVolume.")
        fov = fov_choice(fieldOfViewMm) or fov_from_geometry(ijk_to_ras, reference_labels.shape[-1])
        if fov is None:
            raise InputError(missing_volume_fov_message(reference.GetName()) + " (needed for the FAZ area)")
        metrics = faz_comparison(squeeze_to_2d(predicted_labels > 0, "prediction"),
                                 squeeze_to_2d(reference_labels > 0, "reference"), fov)
        rows = [{"metric": k, "value": float(v)} for k, v in metrics.items()]
        return mrml.rows_to_table(rows, "COIPS evaluation", node=table, scene=self.scene, creator=self.creator)

    def load_sample(self, progress=None, cancel=None, background=None) -> CoipsSample:
        """Generate a gradable OCTA phantom (3x3 mm, 304 px) and its reference FAZ into the scene.

        :returns: :class:`CoipsSample` (``inputVolume`` volume node, ``referenceSegmentation`` segmentation node).
        """
        from ..phantoms.octa import render_octa

        case = render_octa(SAMPLE_SEED, SAMPLE_SIZE, SAMPLE_FOV, quality=2)
        ijk_to_ras = en_face_geometry(case.pixel_mm, SAMPLE_SIZE)
        volume = mrml.array_to_volume((case.image * 255).astype(np.uint8)[None], ijk_to_ras, "COIPS sample OCTA",
                                      scene=self.scene, creator=self.creator)
        reference = mrml.labelmap_to_segmentation(case.faz_mask.astype(np.uint8), ijk_to_ras, [FAZ_SEGMENT],
                                                  "COIPS sample reference FAZ", reference_volume=volume,
                                                  scene=self.scene, creator=self.creator)
        return CoipsSample(volume, reference)


def _table_value(value, column: str):
    """A results-table cell: booleans as text, probabilities rounded to 3 digits."""
    if isinstance(value, bool):
        return str(value)
    if column.startswith("p_") and isinstance(value, float):
        return round(value, 3)
    return value


def _geometry_volume(segmentation):
    """The volume a segmentation takes its grid from (set when it was created on a volume)."""
    return segmentation.GetNodeReference("referenceImageGeometryRef")


def en_face_geometry(pixel_mm: float, size: int) -> np.ndarray:
    """IJK-to-RAS of an en face image as Slicer lays out a PNG (columns towards L, rows towards P, so
    the axial view shows it upright), centred on the origin, with the scan's pixel size."""
    centre = (size - 1) / 2.0 * pixel_mm
    return mrml.ijk_to_ras_matrix((pixel_mm, pixel_mm, pixel_mm), (centre, centre, 0.0), np.diag([-1.0, -1.0, 1.0]))


def faz_comparison(predicted: np.ndarray, reference: np.ndarray, field_of_view_mm: float) -> dict[str, float]:
    """Dice, Jaccard, precision, recall and signed/absolute FAZ area error in mm^2."""
    from .. import metrics
    from .faz import faz_metrics

    predicted_area = faz_metrics(predicted, field_of_view_mm)["faz_area_mm2"]
    reference_area = faz_metrics(reference, field_of_view_mm)["faz_area_mm2"]
    return {"dice": metrics.dice(predicted, reference), "jaccard": metrics.iou(predicted, reference),
            "precision": metrics.precision(predicted, reference), "recall": metrics.recall(predicted, reference),
            "faz_area_mm2": predicted_area, "reference_faz_area_mm2": reference_area,
            "faz_area_error_mm2": predicted_area - reference_area,
            "faz_abs_area_error_mm2": abs(predicted_area - reference_area)}
