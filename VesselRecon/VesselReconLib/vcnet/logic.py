"""VCNet Logic: MRA/SWI volume -> vessel segmentation (closed surface), probability, composited MIPs
with their 2D segmentation, and a measurement table. Usable from Slicer's console and headless.

The array's K axis (slowest, "slices") is taken as the acquisition slice axis of the patches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import metrics, mrml
from ..errors import InputError, check_image
from ..progress import as_reporter
from ..logic_base import SEGMENTATION, TABLE, VOLUME, VesselReconLogic
from .defaults import DEFAULT_MODEL

log = logging.getLogger(__name__)

VESSEL_SEGMENT = mrml.SegmentSpec(1, "Vessels", (0.86, 0.24, 0.22))
MIP_SIZE_SLICES = 5


def contrast_mismatch_warning(metadata: dict, dark: bool) -> str | None:
    """A warning when a model was trained on the other vessel contrast than asked for (bright TOF-MRA or dark
    SWI/MinIP): ``metadata`` is :func:`~VesselReconLib.registry.load_model`'s, whose ``training`` record (a shipped
    model's registry entry, also for its file given by path, or a checkpoint's own) says ``dark``; None when they
    agree or the record does not say."""
    trained_dark = (metadata.get("training") or {}).get("dark")
    if trained_dark is None or bool(trained_dark) == bool(dark):
        return None
    name = metadata.get("source", "this model")
    if dark:
        return (f"Dark vessels (SWI/MinIP) were asked for, but the model {name} was trained on bright-vessel "
                "TOF-MRA only: choose the model vcnet-swi-lite (--model vcnet-swi-lite).")
    return (f"The model {name} was trained on dark-vessel SWI/MinIP, but the vessels are taken as bright: "
            "tick Dark vessels (--dark) for SWI/MinIP, or choose a TOF-MRA model.")


@dataclass
class VCNetResult:
    """Nodes created or updated by :meth:`VCNetLogic.process` and the measurements."""

    outputSegmentation: object
    outputTable: object = None
    outputProbabilityVolume: object | None = None
    outputMipVolume: object | None = None
    outputMipLabelmap: object | None = None
    metrics: dict = field(default_factory=dict)
    labels: np.ndarray | None = None
    ijkToRas: np.ndarray | None = None
    warnings: list = field(default_factory=list)


@dataclass
class VCNetEvaluation:
    """Result of :meth:`VCNetLogic.evaluate`: the table node and the metric values."""

    evaluationTable: object
    metrics: dict


@dataclass
class VCNetSample:
    """Nodes made by :meth:`VCNetLogic.load_sample`."""

    inputVolume: object
    referenceSegmentation: object
    maskNode: object


class VCNetLogic(VesselReconLogic):
    """VC-Net vessel segmentation of MRA (bright vessels) and SWI (dark vessels) volumes."""

    method = "vcnet"
    creator = "VCNet"

    # ------------------------------------------------------------ validation helpers

    @staticmethod
    def _volume_array(node, name: str) -> tuple[np.ndarray, np.ndarray]:
        array, ijk_to_ras = VesselReconLogic.read_volume(node, f"{name} is missing: select a volume first.")
        if array.ndim == 4:
            raise InputError(f"{name} has {array.shape[-1]} components; VC-Net needs a scalar (grayscale) volume.")
        if array.ndim == 3 and array.shape[0] < MIP_SIZE_SLICES:
            raise InputError(f"{name} has {array.shape[0]} slices; VC-Net needs at least {MIP_SIZE_SLICES} "
                             "(one 5-slice MIP). Use a 3D MRA/SWI volume.")
        return check_image(array, name, 3, min_size=MIP_SIZE_SLICES), ijk_to_ras  # thinner than a patch: padded

    def _labels_of(self, node, reference_volume, name: str, shape) -> np.ndarray:
        """Binary array of a labelmap volume or segmentation node on the reference geometry."""
        if node is None:
            raise InputError(f"{name} is missing.")
        if node.IsA("vtkMRMLSegmentationNode") and node.GetSegmentation().GetNumberOfSegments() == 0:
            raise InputError(f"{name} has no segments.")
        array = mrml.labels_on_grid(node, reference_volume, shape, name)
        return (np.asarray(array) > 0).astype(np.uint8)

    # ------------------------------------------------------------ main entry point

    def process(self, inputVolume, maskVolume=None, darkVessels: bool = False, model: str = DEFAULT_MODEL,
                device: str = "auto", overlap: float = 0.0, threshold: float = 0.5, minComponentMm3: float = 0.0,
                batchSize: int | None = None, outputProbability: bool = False, outputMip: bool = False,
                outputSegmentation=None, outputProbabilityVolume=None, outputMipVolume=None, outputTable=None,
                referenceSegmentation=None, referenceLabelmap=None, progress=None, cancel=None,
                background=None, resampleToModelSpacing: bool = True, refineBoundary: bool = True) -> VCNetResult:
        """Segment vessels with VC-Net.

        :param inputVolume: scalar MRA/TOF or SWI volume node (slices along K).
        :param maskVolume: optional brain/ROI labelmap or scalar mask (same grid): sets the intensity
            statistics (without one, the whole volume's dominant tissue intensity is used, with a
            warning); outside is background.
        :param darkVessels: SWI/MinIP: vessels are dark; intensities are inverted inside the mask.
            Use it with ``model="vcnet-swi-lite"``: the default model is trained on TOF only.
        :param model: shipped preset/name (``DEFAULT_MODEL``, the default TOF model; ``lite``;
            ``vcnet-swi-lite`` for SWI) or a ``.safetensors``/``.pt`` checkpoint path.
        :param device: ``auto``, ``cuda``, ``mps`` or ``cpu``.
        :param overlap: patch overlap (0 = non-overlapping as in the paper; > 0 Gaussian blending).
        :param threshold: probability threshold (0.5).
        :param minComponentMm3: remove connected components smaller than this volume.
        :param batchSize: patches per forward pass (halved automatically on out-of-memory).
        :param outputProbability: also output the probability volume.
        :param outputMip: also output the composited MIPs of each K3-slice slab and their 2D segmentation.
        :param outputSegmentation: segmentation node to overwrite (default: "<input> VCNet vessels").
        :param outputProbabilityVolume: volume node to overwrite with the probability.
        :param outputMipVolume: volume node to overwrite with the composited MIPs.
        :param outputTable: table node to overwrite with the measurements.
        :param referenceSegmentation: reference segmentation node (adds Dice, precision, FPR).
        :param referenceLabelmap: reference labelmap volume (alternative to ``referenceSegmentation``).
        :param background: ``background(fn) -> fn()`` runs the MRML-free computation off the GUI thread.
        :param refineBoundary: draw the vessel boundary on the input grid where the intensity falls below
            0.4x the local vessel intensity, among voxels of probability >= 0.1 near detected vessels
            (``inference.refine_boundary``); False thresholds the probability alone.
        :param resampleToModelSpacing: resample to the model's training spacing (0.5 x 0.5 x 0.8 mm for
            the shipped models) and the result back to the input grid; an input finer than that (say
            0.3 mm) also runs on a second grid 0.6x the model spacing, for thin vessels (the union).
        :returns: :class:`VCNetResult`.
        """
        from ..device import resolve_device
        from .inference import segment

        self.check_outputs(outputSegmentation=(outputSegmentation, SEGMENTATION), outputTable=(outputTable, TABLE),
                           outputProbabilityVolume=(outputProbabilityVolume, VOLUME), outputMipVolume=(outputMipVolume, VOLUME))
        self.check_range(minComponentMm3, "minComponentMm3", 0, hint="Use 0 to keep every component.")
        if batchSize is not None:
            self.check_range(batchSize, "batchSize", 1, 4096, integer=True)
        array, ijk_to_ras = self._volume_array(inputVolume, "Input volume")
        mask = None
        if maskVolume is not None:
            mask = self._labels_of(maskVolume, inputVolume, "Mask", array.shape)
        reference = referenceSegmentation if referenceSegmentation is not None else referenceLabelmap
        ref = self._labels_of(reference, inputVolume, "Reference", array.shape) if reference is not None else None
        if not 0 <= overlap < 1:
            raise InputError(f"Overlap must be in [0, 1); got {overlap}.")
        if not 0 < threshold < 1:
            raise InputError(f"Threshold must be in (0, 1); got {threshold}.")
        try:
            torch_device = resolve_device(device)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        net, metadata = self.model(model, str(torch_device))
        mismatch = contrast_mismatch_warning(metadata, darkVessels)
        if mismatch:
            log.warning(mismatch)
        spacing = tuple(mrml.spacing_of(ijk_to_ras))
        def compute():
            return segment(array, spacing, net, mask, darkVessels, overlap, threshold, minComponentMm3, torch_device,
                           batchSize, outputMip, progress, cancel, resample_to_model=resampleToModelSpacing,
                           refine=refineBoundary)

        result = background(compute) if background is not None else compute()
        nodes = {"segmentation": outputSegmentation, "probability": outputProbabilityVolume,
                 "mip": outputMipVolume, "table": outputTable}
        with self.writing(as_reporter(progress, cancel), follow=inputVolume):
            out = self._write_nodes(inputVolume, ijk_to_ras, net, result, ref, nodes,
                                    outputProbability or outputProbabilityVolume is not None)
        if mismatch:
            out.warnings.insert(0, mismatch)
        return out

    def _write_nodes(self, inputVolume, ijk_to_ras, net, result, ref, nodes: dict, with_probability: bool):
        scene = self.scene
        name = inputVolume.GetName()
        segmentation = mrml.labelmap_to_segmentation(
            result.labels, ijk_to_ras, [VESSEL_SEGMENT], f"{name} VCNet vessels", node=nodes["segmentation"],
            reference_volume=inputVolume, scene=scene, closed_surface=True, creator=self.creator)
        out = VCNetResult(segmentation, labels=result.labels, ijkToRas=ijk_to_ras,
                          warnings=list(result.info.get("warnings", [])))
        if with_probability:
            out.outputProbabilityVolume = mrml.array_to_volume(
                result.probability, ijk_to_ras, f"{name} VCNet probability", node=nodes["probability"], scene=scene,
                window_level=(1.0, 0.5), creator=self.creator)
        if result.mip_image is not None:
            mip_matrix = ijk_to_ras.copy()  # columns scaled to the MIP grid (model spacing, K3 slices a slab)
            native = mrml.spacing_of(ijk_to_ras)
            for axis, size in enumerate(result.info.get("mip_spacing", (native[0], native[1], native[2] * net.patch[0]))):
                mip_matrix[:3, axis] *= size / native[axis]
            out.outputMipVolume = mrml.array_to_volume(result.mip_image, mip_matrix, f"{name} VCNet composited MIPs",
                                                       node=nodes["mip"], scene=scene, creator=self.creator)
            out.outputMipLabelmap = mrml.array_to_volume(result.mip_labels, mip_matrix,
                                                         f"{name} VCNet MIP segmentation", scene=scene,
                                                         labelmap=True, creator=self.creator)
        out.metrics = dict(result.measurements)
        if ref is not None:
            out.metrics.update(reference_metrics(result.labels, ref))
        out.metrics.update({"seconds": round(result.info["seconds"], 3), "device": result.info["device"]})
        out.outputTable = mrml.rows_to_table(metric_rows(out.metrics), f"{name} VCNet measurements",
                                             node=nodes["table"], scene=scene, creator=self.creator)
        return out

    # ------------------------------------------------------------ evaluation, samples, files

    def evaluate(self, prediction, reference, referenceVolume=None, table=None) -> VCNetEvaluation:
        """Compare a vessel segmentation with a reference: Dice, precision, FPR, recall, volumes.

        :param prediction: segmentation node or labelmap volume (e.g. the VC-Net output).
        :param reference: segmentation node or labelmap volume (ground truth).
        :param referenceVolume: the image grid both are compared on (default: a labelmap's own grid).
        :param table: table node to overwrite.
        :returns: :class:`VCNetEvaluation` (table node and metrics).
        """
        segmentation = prediction
        if segmentation is None or reference is None:
            raise InputError("Select both the segmentation to evaluate and the reference segmentation.")
        grid = referenceVolume or (reference if not reference.IsA("vtkMRMLSegmentationNode") else segmentation)
        if grid is None or grid.IsA("vtkMRMLSegmentationNode"):
            raise InputError("Pass referenceVolume (the image both segmentations belong to).")
        array, ijk_to_ras = mrml.volume_to_array(grid)
        pred = self._labels_of(segmentation, grid, "Segmentation", array.shape)
        ref = self._labels_of(reference, grid, "Reference", array.shape)
        values = reference_metrics(pred, ref)
        voxel = float(np.prod(mrml.spacing_of(ijk_to_ras)))
        values.update({"vessel_volume_mm3": float(pred.sum() * voxel), "reference_volume_mm3": float(ref.sum() * voxel)})
        node = mrml.rows_to_table(metric_rows(values), "VCNet evaluation", node=table, scene=self.scene,
                                  creator=self.creator)
        return VCNetEvaluation(node, values)

    def load_sample(self, kind: str = "mra", seed: int = 0, crop=(64, 192, 192)) -> VCNetSample:
        """Generate a phantom case into the scene: volume, ground-truth segmentation and brain mask.

        :param kind: ``mra`` (bright arteries), ``swi`` (dark veins) or ``micro``.
        :param crop: ``(nk, nj, ni)`` crop of the 448x448x128 slab, or None for the whole slab.
        """
        from ..phantoms.mra import render_mra

        phantom = render_mra(kind, seed=seed, crop=crop)
        matrix = phantom.ijk_to_ras
        label = kind.upper()
        volume = mrml.array_to_volume(phantom.image, matrix, f"VCNet sample {label}", scene=self.scene,
                                      creator=self.creator)
        truth = mrml.labelmap_to_segmentation(phantom.label, matrix, [VESSEL_SEGMENT], f"VCNet sample {label} truth",
                                              reference_volume=volume, scene=self.scene, creator=self.creator)
        mask = mrml.array_to_volume(phantom.brain_mask, matrix, f"VCNet sample {label} brain mask", scene=self.scene,
                                    labelmap=True, creator=self.creator)
        return VCNetSample(volume, truth, mask)

    def load_volume(self, path: str, name: str, labelmap: bool = False):
        """Read a volume file (NRRD/NIfTI/MHA) or DICOM folder into a node."""
        from ..volume_io import read_image

        image = read_image(path)
        if image.GetDimension() != 3:
            raise InputError(f"{path} is {image.GetDimension()}D; VC-Net needs a 3D volume.")
        return mrml.sitk_to_volume(image, name, scene=self.scene, labelmap=labelmap, new=True)

    def write_outputs(self, result: VCNetResult, out: str | Path) -> list[Path]:
        """Write the segmentation (NIfTI labelmap), probability, MIPs and the table (CSV)."""
        import SimpleITK as sitk

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        with mrml.scratch(self.scene):  # the export node and its display node never outlive the call
            label_node = mrml.array_to_volume(result.labels, result.ijkToRas, "__vcnet_export", scene=self.scene,
                                              labelmap=True, creator=self.creator)
            sitk.WriteImage(mrml.volume_to_sitk(label_node), str(out / "vcnet_vessels.nii.gz"), True)
            written.append(out / "vcnet_vessels.nii.gz")
        for node, file_name in ((result.outputProbabilityVolume, "vcnet_probability.nii.gz"),
                                (result.outputMipVolume, "vcnet_mips.nii.gz"),
                                (result.outputMipLabelmap, "vcnet_mip_labels.nii.gz")):
            if node is not None:
                sitk.WriteImage(mrml.volume_to_sitk(node), str(out / file_name), True)
                written.append(out / file_name)
        rows = mrml.table_to_rows(result.outputTable)
        csv = out / "vcnet_measurements.csv"
        csv.write_text("measurement,value,unit\n" + "".join(csv_row(r) for r in rows), encoding="utf-8")
        written.append(csv)
        return written


UNITS = {"vessel_volume_mm3": "mm3", "reference_volume_mm3": "mm3", "centerline_length_mm": "mm", "seconds": "s"}


def reference_metrics(pred: np.ndarray, ref: np.ndarray) -> dict:
    """Dice, precision, recall and false positive rate of a prediction against a reference."""
    report = metrics.segmentation_report(pred, ref)
    return {"dice": report["dice"], "precision": report["precision"], "recall": report["recall"],
            "fpr": report["fpr"]}


def csv_row(row: dict) -> str:
    """One CSV line: numbers to 4 significant decimals (6 significant digits for small values such as
    the FPR); a text value (the device) goes to the value column instead of ``nan``."""
    value = row["Value"]
    if isinstance(value, float) and np.isnan(value):
        return f"{row['Measurement']},{row['Unit']},\n"
    text = f"{value:.4f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3e}"
    return f"{row['Measurement']},{text},{row['Unit']}\n"


def metric_rows(values: dict) -> list[dict]:
    """Table rows ``Measurement | Value | Unit`` (numbers only; text values go to the unit column)."""
    rows = []
    for key, value in values.items():
        if isinstance(value, (int, float, np.floating, np.integer)):
            rows.append({"Measurement": key, "Value": float(value), "Unit": UNITS.get(key, "")})
        else:
            rows.append({"Measurement": key, "Value": float("nan"), "Unit": str(value)})
    return rows
