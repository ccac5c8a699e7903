"""OCTADepth Logic: en face OCTA volume -> depth map, vessel segmentation, depth-coloured 3D tubes,
centreline model and a depth-band table, all on the input's geometry. Qt-free; console example::

    from VesselReconLib.octadepth.logic import OCTADepthLogic
    logic = OCTADepthLogic()
    sample = logic.load_sample()
    result = logic.process(sample.inputVolume, fieldOfViewMm=3)
    logic.evaluate(result.outputDepthVolume, sample.referenceDepthVolume,
                   referenceCenterlines=sample.referenceCenterlines)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import metrics, mrml
from ..enface_io import fov_choice
from ..errors import InputError
from ..folder_batch import write_rows
from ..logic_base import MODEL, SEGMENTATION, TABLE, VOLUME, VesselReconLogic
from ..progress import as_reporter
from . import reconstruction

if TYPE_CHECKING:  # pipeline imports torch: loaded on first use, so the sample needs none
    from . import pipeline

log = logging.getLogger(__name__)
DEPTH_COLORS = "OCTADepth depth colors"
DEPTH_RAMP_COLORS = "OCTADepth depth ramp"   # the models' table: the same ramp without the map's black background
NAMES = {"depth": "OCTADepth depth map", "segmentation": "OCTADepth vessels", "model": "OCTADepth vessel tubes",
         "centerlines": "OCTADepth centerlines", "table": "OCTADepth depth bands", "metrics": "OCTADepth evaluation"}
UNKNOWN_SPACING = 1.0
FIELDS_MM = (3.0, 6.0)
FOV_SOURCE_ATTRIBUTE = "VesselRecon.fovSource"
# how the run log names each field-of-view source (``enface_io.resolve_fov``; "config" is --fov or the panel's choice)
FOV_SOURCE_WORDS = {"config": "from the field of view given (--fov or the module's choice)",
                    "metadata": "from the image's metadata", "filename": "from the file name",
                    "image spacing": "from the image spacing"}
MAX_ASPECT = 1.1
"""Width/height (either way) above which an image is called non-square."""
WIDE_FIELD_MM = 6.5
"""Fields wider than this are wide-field scans or montages, outside the 3-6 mm scans OCTADepth knows."""
MAX_VESSEL_FRACTION = 0.6
MIN_VESSEL_FRACTION = 0.01
MIN_DEPTH_SPREAD = 0.05
"""Smallest 5th-95th percentile spread of the relative depth on vessels before it counts as collapsed."""


def missing_volume_fov_message(name: str) -> str:
    return (f"The field of view of '{name}' is unknown: the image carries no pixel spacing (DICOM/TIFF "
            "metadata) and its file name no 3x3/6x6 token, and OCTADepth does not guess it (a 6 mm scan "
            "taken for 3 mm halves every length and radius). Give it: --fov 3 or --fov 6 on the command "
            "line, fieldOfViewMm=3 or 6 in Python, or choose 3 mm or 6 mm in the module's field-of-view "
            "selector.")


def shape_warnings(shape: tuple[int, int], field_mm: float) -> list[str]:
    """Warnings for non-square images and wide-field scans (OCTADepth is made for 3-6 mm square scans)."""
    height, width = shape
    warnings = []
    if max(height, width) > MAX_ASPECT * min(height, width):
        warnings.append(f"The image is not square ({width} x {height} px): OCTADepth is made for square "
                        "3x3 or 6x6 mm macular scans; a montage or cropped export may give wrong depths.")
    if field_mm > WIDE_FIELD_MM:
        warnings.append(f"The field of view is {field_mm:.1f} mm wide: a wide-field scan or montage, outside "
                        "the 3-6 mm scans OCTADepth was trained and checked on.")
    return warnings


def plausibility_warnings(vessel_mask: np.ndarray, depth: np.ndarray) -> list[str]:
    """Warnings for an implausible vessel fraction or a collapsed depth range."""
    warnings = []
    fraction = float(np.mean(vessel_mask))
    if fraction > MAX_VESSEL_FRACTION:
        warnings.append(f"{fraction:.0%} of the image was marked as vessel (expert labels mark about 10-20 %): "
                        "the image is probably not an en face OCTA angiogram like the training data.")
    elif fraction < MIN_VESSEL_FRACTION:
        warnings.append(f"Only {fraction:.1%} of the image was marked as vessel: check the image and threshold.")
    if vessel_mask.sum() >= 20:
        low, high = np.percentile(depth[vessel_mask], (5, 95))
        if high - low < MIN_DEPTH_SPREAD:
            warnings.append(f"The predicted depth has collapsed (5th-95th percentile {low:.2f}-{high:.2f} of the "
                            "relative range): the 3D model is flat and carries no depth information.")
    return warnings


def depth_ramp() -> list[tuple[float, float, float]]:
    from ..phantoms.octa import DEPTH_RAMP

    return DEPTH_RAMP


@dataclass
class OCTADepthOutputs:
    """Nodes written by :meth:`OCTADepthLogic.process`, plus measures and messages."""

    outputDepthVolume: object
    outputSegmentation: object
    outputModel: object
    outputCenterlines: object
    outputTable: object
    pixelMm: float
    spacingAssumed: bool
    """True when the pixel size came from the user (``fieldOfViewMm``/``pixelMm``), not the image."""
    message: str
    timings: dict = field(default_factory=dict)
    fieldOfViewMm: float = 0.0
    fovSource: str = ""
    """``metadata``, ``filename``, ``config`` (read with a given field), ``user`` or ``user pixel size``."""
    warnings: list = field(default_factory=list)
    _pipeline: pipeline.OCTADepthResult | None = field(default=None, repr=False)

    @property
    def pipelineResult(self) -> pipeline.OCTADepthResult:
        return self._pipeline

    def summary(self) -> dict:
        network = self._pipeline.network
        total = mrml.table_to_rows(self.outputTable)[-1]
        return {"pixel_mm": round(self.pixelMm, 6), "spacing_assumed": self.spacingAssumed,
                "field_of_view_mm": round(self.fieldOfViewMm, 4), "fov_source": self.fovSource,
                "warnings": list(self.warnings),
                "segments": network.segment_count, "links": network.link_count, "junctions": network.junctions,
                "vessel_length_mm": round(float(total["length_mm"]), 3),
                "mean_depth_mm": round(float(total["mean_depth_mm"]), 4),
                **{k: round(v, 3) for k, v in self._pipeline.timings.items()}}

    def depth_rgb(self) -> np.ndarray:
        """The depth-encoded angiogram: depth colour on predicted vessels (red near, blue far)."""
        from ..phantoms.octa import depth_to_rgb

        result = self._pipeline
        return depth_to_rgb(result.depth, result.vessel_mask)

    def render(self, path, size: tuple[int, int] = (800, 600)) -> Path:
        """PNG of the depth-coloured tubes seen obliquely."""
        from .. import render

        layer = render.Layer(self.outputModel.GetPolyData(), scalars="depth", ramp=depth_ramp(),
                             scalar_range=(0.0, self._pipeline.network.depth_range_mm))
        return render.render_meshes([layer], path, size=size, view=(20.0, 35.0))

    def save_files(self, stem) -> list[Path]:
        """Depth map (16-bit PNG of relative depth), depth-coded PNG, vessel mask PNG, tubes (.vtp, LPS as Slicer
        writes models), table (.csv)."""
        from PIL import Image

        from .. import meshes, render

        stem = Path(stem)
        result = self._pipeline
        paths = [stem.with_name(stem.name + suffix) for suffix in
                 ("_depth.png", "_depth_rgb.png", "_vessels.png", "_tubes.vtp", "_depth_bands.csv")]
        Image.fromarray(np.round(np.clip(result.depth * result.vessel_mask, 0, 1) * 65535).astype(np.uint16)).save(paths[0])
        render.save_image_png(self.depth_rgb(), paths[1])
        Image.fromarray(result.vessel_mask.astype(np.uint8) * 255).save(paths[2])
        meshes.save_polydata_lps(self.outputModel.GetPolyData(), paths[3])
        write_rows(mrml.table_to_rows(self.outputTable), paths[4], first=())
        return paths


@dataclass
class OCTADepthSample:
    """Nodes (and the scan size) made by :meth:`OCTADepthLogic.load_sample`."""

    inputVolume: object
    referenceDepthVolume: object
    referenceCenterlines: object
    fieldOfViewMm: int


class OCTADepthLogic(VesselReconLogic):
    """Depth estimation and 3D reconstruction of retinal vessels from one en face OCTA image."""

    method = "octadepth"
    creator = "OCTADepth"

    # ------------------------------------------------------------ inputs

    def load_image(self, path: str | Path, name: str | None = None, fieldOfViewMm: float | None = None):
        """Read an en face image (PNG, JPEG, BMP, TIFF or DICOM) as a single-slice scalar volume.

        Decoding is shared with COIPS (:mod:`VesselReconLib.enface_io`): colour becomes grey and the
        pixel size comes from ``fieldOfViewMm``, else DICOM PixelSpacing, TIFF resolution or a
        ``3x3``/``6mm``/``angio6superf`` token in the file name. Files without any get spacing 1.0,
        which :meth:`process` refuses unless it is given the field of view. The source of the field
        of view is kept in the node attribute ``VesselRecon.fovSource``.
        """
        from ..enface_io import read_image

        path = Path(path)
        if not path.exists():
            raise InputError(f"{path} does not exist: check the file name.")
        image = read_image(path, fieldOfViewMm, required=False)
        pixel_mm = UNKNOWN_SPACING if image.field_of_view_mm is None else image.pixel_size_mm
        geometry = mrml.ijk_to_ras_matrix((pixel_mm, pixel_mm, pixel_mm))
        node = mrml.array_to_volume(image.pixels[None], geometry, name or path.stem, scene=self.scene, new=True)
        node.SetAttribute(FOV_SOURCE_ATTRIBUTE, image.fov_source)
        return node

    def _geometry(self, ijk_to_ras: np.ndarray, width: int, field_of_view_mm: float | None,
                  pixel_mm: float | None, name: str = "the image",
                  image_source: str | None = None) -> tuple[np.ndarray, float, bool, str, str]:
        """The geometry outputs sit on and where its field of view came from.

        Order: ``pixel_mm`` (user), ``field_of_view_mm`` (user: ``--fov`` / the widget), the volume's
        own spacing (metadata or file name, ``image_source``). Never assumed: an image without any of
        these raises :class:`InputError` asking for the field of view.

        :returns: ``(ijk_to_ras, pixel_mm, from_user, message, fov_source)``.
        """
        spacing = mrml.spacing_of(ijk_to_ras)
        known = not np.allclose(spacing[:2], UNKNOWN_SPACING)
        if pixel_mm is None and field_of_view_mm is None:
            if not known:
                raise InputError(missing_volume_fov_message(name))
            source = image_source if image_source not in (None, "", "unknown") else "image spacing"
            return (ijk_to_ras, float(spacing[0]), False,
                    f"pixel size {spacing[0]:.5f} mm {FOV_SOURCE_WORDS.get(source, f'from the image ({source})')}",
                    source)
        if pixel_mm is not None:
            message, source = f"pixel size {pixel_mm:.5f} mm set by the user", "user pixel size"
        else:
            pixel_mm = float(field_of_view_mm) / width
            message = (f"field of view {field_of_view_mm:g} x {field_of_view_mm:g} mm set by the user: "
                       f"{pixel_mm:.5f} mm per pixel ({field_of_view_mm:g} mm / {width} px)")
            source = "user"
        matrix = np.array(ijk_to_ras, float)
        directions = matrix[:3, :3] / spacing[None, :]
        matrix[:3, :2] = directions[:, :2] * pixel_mm
        return matrix, float(pixel_mm), True, message, source

    def _validate(self, input_volume, depth_range_mm: float, threshold: float, model: str):
        array, ijk_to_ras = self.read_volume(
            input_volume, "No input volume: load an en face OCTA image (PNG, JPEG, BMP, TIFF or DICOM) first.")
        from . import pipeline

        image = pipeline.validate_image(array, f"Volume '{input_volume.GetName()}'")
        if not 0.0 < depth_range_mm <= 5.0:
            raise InputError(f"Depth range {depth_range_mm} mm is out of range: use 0.01-5 mm (retina: about 0.25).")
        if not 0.0 < threshold < 1.0:
            raise InputError(f"Vessel threshold {threshold} must lie strictly between 0 and 1.")
        return image, ijk_to_ras

    # ------------------------------------------------------------ processing

    def process(self, inputVolume, fieldOfViewMm: float | None = None, pixelMm: float | None = None,
                depthRangeMm: float = reconstruction.DEFAULT_DEPTH_RANGE_MM, threshold: float = 0.5,
                minSegmentLengthPx: int = 2, outputDepthVolume=None, outputSegmentation=None,
                outputModel=None, outputCenterlines=None, outputTable=None, model: str = "lite",
                device: str = "auto", progress=None, cancel=None, background=None) -> OCTADepthOutputs:
        """Predict the depth map and vessel mask, rebuild the 3D vessels and write the output nodes.

        :param inputVolume: single-slice scalar volume with the en face angiogram (304-512 px usual).
        :param fieldOfViewMm: scan width in mm (3 or 6; "3 mm"; ``None``/0/"auto (from the image)": the
            volume's own spacing). Overrides the volume's spacing when given. A volume without spacing
            (1.0, plain PNG/JPEG without a 3x3/6x6 name token) and no ``fieldOfViewMm``/``pixelMm`` is refused.
        :param pixelMm: pixel size in mm; overrides the volume's spacing.
        :param depthRangeMm: physical depth of relative depth 1 (0.25 mm: the inner retinal slab).
        :param threshold: vessel probability threshold.
        :param minSegmentLengthPx: shortest skeleton segment kept (pixels, at least 2), before re-linking.
        :param outputDepthVolume: volume to overwrite with the depth map (mm on vessels, 0 elsewhere).
        :param outputSegmentation: segmentation to overwrite with the vessel mask.
        :param outputModel: model to overwrite with the depth-coloured tubes (point scalars ``depth``).
        :param outputCenterlines: model to overwrite with the centreline polylines.
        :param outputTable: table to overwrite with length, segment count and mean depth per depth band.
        :param model: shipped preset (``lite``, ``unet-lite``) or a checkpoint path.
        :param device: ``auto``, ``cuda``, ``mps`` or ``cpu``.
        :param progress: ``progress(fraction, message)``.
        :param cancel: ``cancel() -> bool``.
        :param background: ``background(fn) -> fn()`` runs the MRML-free part off the GUI thread.
        :raises InputError: bad input or checkpoint (the scene is left untouched).
        """
        reporter = as_reporter(progress, cancel)
        image, ijk_to_ras = self._validate(inputVolume, depthRangeMm, threshold, model)
        self.check_outputs(outputDepthVolume=(outputDepthVolume, VOLUME), outputSegmentation=(outputSegmentation, SEGMENTATION),
                           outputModel=(outputModel, MODEL), outputCenterlines=(outputCenterlines, MODEL),
                           outputTable=(outputTable, TABLE))
        fieldOfViewMm = fov_choice(fieldOfViewMm)
        self.check_range(minSegmentLengthPx, "Shortest segment (px)", 1, 10000, integer=True)
        if pixelMm is not None and not 0.0 < pixelMm < 1.0:
            raise InputError(f"Pixel size {pixelMm} mm is implausible for OCTA: use e.g. 3 mm / 304 px = 0.00987.")
        geometry, pixel, assumed, message, fov_source = self._geometry(
            ijk_to_ras, image.shape[1], fieldOfViewMm, pixelMm, inputVolume.GetName(),
            inputVolume.GetAttribute(FOV_SOURCE_ATTRIBUTE))
        field_mm = pixel * image.shape[1]
        warnings = shape_warnings(image.shape, field_mm)
        net, _ = self.model(model, device)
        torch_device = str(next(net.parameters()).device)

        from . import pipeline

        def compute():
            return pipeline.run_pipeline(image, pixel, net, torch_device, depthRangeMm, threshold, geometry,
                                         minSegmentLengthPx, progress=reporter.sub(0.0, 0.9))

        result = background(compute) if background is not None else compute()
        warnings += plausibility_warnings(result.vessel_probability > threshold, result.depth)
        for warning in warnings:
            log.warning("OCTADepth: %s", warning)
        field = {"field_of_view_mm": round(field_mm, 4), "fov_source": fov_source}
        reporter(0.9, "writing scene nodes")
        with self.writing(reporter, follow=inputVolume):
            outputs = self._write_nodes(result, geometry, pixel, depthRangeMm, outputDepthVolume,
                                        outputSegmentation, outputModel, outputCenterlines, outputTable, field)
        log.info("OCTADepth: %s", message)
        reporter(1.0, "done")
        if warnings:
            message = message + ". Warnings: " + " ".join(warnings)
        return OCTADepthOutputs(*outputs, pixelMm=pixel, spacingAssumed=assumed, message=message,
                                timings=result.timings, fieldOfViewMm=field_mm, fovSource=fov_source,
                                warnings=warnings, _pipeline=result)

    def _write_nodes(self, result, geometry, pixel, depth_range_mm, depth_node, segmentation_node,
                     model_node, centerline_node, table_node, field: dict):
        scene = self.scene
        colors, ramp = self.depth_color_table(), self.depth_color_table(background=False)
        depth_mm = np.where(result.vessel_mask, np.maximum(result.depth_mm, depth_range_mm / 255.0), 0.0)
        depth_node = mrml.array_to_volume(depth_mm.astype(np.float32)[None], geometry, NAMES["depth"], depth_node,
                                          scene, color_node_id=colors.GetID(),
                                          window_level=(depth_range_mm, depth_range_mm / 2), creator=self.creator)
        # referenced to the depth map, whose grid the labels are on: a field of view given here rescales the
        # input's own (placeholder) spacing, and a segmentation referencing that grid is resampled when saved
        segmentation_node = mrml.labelmap_to_segmentation(
            result.vessel_mask.astype(np.uint8)[None], geometry, [mrml.SegmentSpec(1, "Retinal vessels")],
            NAMES["segmentation"], segmentation_node, reference_volume=depth_node, scene=scene, creator=self.creator)
        model_node = mrml.polydata_to_model(result.tubes, NAMES["model"], scalars="depth", color_node_id=ramp.GetID(),
                                            scalar_range=(0.0, depth_range_mm), node=model_node, scene=scene,
                                            creator=self.creator)
        centerline_node = mrml.polydata_to_model(centerline_polydata(result.network, geometry), NAMES["centerlines"],
                                                 color=(1.0, 0.8, 0.1), scalars="depth", color_node_id=ramp.GetID(),
                                                 scalar_range=(0.0, depth_range_mm), node=centerline_node,
                                                 scene=scene, creator=self.creator)
        rows = [{**row, **field} for row in reconstruction.depth_band_rows(result.network)]
        table_node = mrml.rows_to_table(rows, NAMES["table"], table_node, scene, creator=self.creator)
        return depth_node, segmentation_node, model_node, centerline_node, table_node

    def depth_color_table(self, background: bool = True):
        """The red-near, blue-far colour table; with ``background`` (the depth map) entry 0 is black for the pixels
        off the vessels, without it (tubes, centrelines: every point lies on a vessel) the ramp starts at red."""
        node = mrml.color_table(DEPTH_COLORS if background else DEPTH_RAMP_COLORS, depth_ramp(), scene=self.scene)
        if background:
            node.SetColor(0, "background", 0.0, 0.0, 0.0, 1.0)
        return node

    # ------------------------------------------------------------ sample and evaluation

    def load_sample(self, seed: int = 7, sizePx: int = 304, fieldOfViewMm: float = 3.0, progress=None, cancel=None,
                    background=None) -> OCTADepthSample:
        """Render a phantom OCTA case into the scene: the image, its true depth map and centrelines.

        :param sizePx: image width and height in pixels.
        :param fieldOfViewMm: scan size in mm (3 or 6).
        :returns: :class:`OCTADepthSample` (``inputVolume``, ``referenceDepthVolume``, ``referenceCenterlines``,
            ``fieldOfViewMm``).
        """
        from ..phantoms.octa import render_octa

        from .data import centerline_points

        def render():  # the depth-realistic phantoms OCTADepth trains on
            return render_octa(seed, sizePx, fieldOfViewMm, depth_realism=True)

        case = background(render) if background else render()
        geometry = mrml.ijk_to_ras_matrix((case.pixel_mm, case.pixel_mm, case.pixel_mm))
        image = mrml.array_to_volume(case.image[None], geometry, f"OCTA sample {seed}", scene=self.scene,
                                     creator=self.creator)
        z0, z1 = case.depth_range_mm
        depth_mm = np.where(case.vessel_mask, z0 + case.depth * (z1 - z0), 0.0).astype(np.float32)
        reference = mrml.array_to_volume(depth_mm[None], geometry, f"OCTA sample {seed} reference depth",
                                         scene=self.scene, color_node_id=self.depth_color_table().GetID(),
                                         window_level=(z1 - z0, (z1 - z0) / 2), creator=self.creator)
        points = centerline_points(case.centerlines, case.pixel_mm, z0)
        lines = reconstruction.to_ras(points, geometry)
        curve_data = _points_polydata(lines, points[:, 2])
        curves = mrml.polydata_to_model(curve_data, f"OCTA sample {seed} reference centerlines", color=(0.2, 0.9, 0.2),
                                        scene=self.scene, creator=self.creator)
        curves.GetDisplayNode().SetVisibility(False)
        return OCTADepthSample(image, reference, curves, int(fieldOfViewMm))

    def evaluate(self, prediction, reference, referenceCenterlines=None, table=None,
                 depthRangeMm: float = reconstruction.DEFAULT_DEPTH_RANGE_MM, progress=None, cancel=None,
                 background=None):
        """Compare a predicted depth map with a reference depth map (both mm, 0 off vessels).

        Writes delta < 1.25^k, ARD and RMSE (mm) on the reference vessel pixels, vessel Dice, and, when
        ``referenceCenterlines`` (a model whose points are the true 3D centrelines) is given, the
        Chamfer and Hausdorff distances (mm) between the reconstructed and true centreline points.

        :param prediction: depth map volume from :meth:`process` (or an :class:`OCTADepthOutputs`).
        :param reference: reference depth map volume on the same grid.
        :param table: table to overwrite (default: ``OCTADepth evaluation``).
        :returns: the table node (rows ``metric``, ``value``).
        """
        if isinstance(prediction, OCTADepthOutputs):
            prediction = prediction.outputDepthVolume
        if prediction is None or reference is None:
            raise InputError("Evaluation needs a predicted depth map (run Apply) and a reference depth map.")
        pred, pred_geometry = mrml.volume_to_array(prediction)
        ref, _ = mrml.volume_to_array(reference)
        if pred.shape != ref.shape:
            raise InputError(f"Prediction {pred.shape} and reference {ref.shape} differ in size: use the reference "
                             "that belongs to the input image.")
        pred, ref = pred[0].astype(np.float64), ref[0].astype(np.float64)
        if not (ref > 0).any():
            raise InputError("The reference depth map has no vessel pixels (all values are 0).")
        values = metrics.depth_report(pred, ref, ref > 0)
        values["dice"] = metrics.dice(pred > 0, ref > 0)
        if referenceCenterlines is not None and (pred > 0).any():
            spacing = mrml.spacing_of(pred_geometry)
            network = reconstruction.reconstruct(pred > 0, pred / depthRangeMm, (spacing[1], spacing[0]),
                                                 depthRangeMm)
            points = reconstruction.to_ras(network.centerline_points(), pred_geometry)
            truth = metrics.as_points(referenceCenterlines.GetPolyData())
            values["chamfer_mm"] = metrics.chamfer_distance(points, truth)
            values["hausdorff_mm"] = metrics.hausdorff_distance(points, truth)
        rows = [{"metric": k, "value": float(v)} for k, v in values.items()]
        return mrml.rows_to_table(rows, NAMES["metrics"], table, self.scene, creator=self.creator)


# ------------------------------------------------------------------ helpers


def _points_polydata(points: np.ndarray, depth: np.ndarray):
    """Vertices with a ``depth`` point array."""
    from .. import meshes

    data = meshes.polydata_from_arrays(points)
    from vtkmodules.vtkCommonDataModel import vtkCellArray
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonCore import vtkIdTypeArray

    vertices = vtkCellArray()
    id_type = vtkIdTypeArray().GetDataType()
    vertices.SetData(numpy_support.numpy_to_vtk(np.arange(len(points) + 1, dtype=np.int64), deep=True, array_type=id_type),
                     numpy_support.numpy_to_vtk(np.arange(len(points), dtype=np.int64), deep=True, array_type=id_type))
    data.SetVerts(vertices)
    meshes.add_point_array(data, "depth", depth)
    return data


def centerline_polydata(network: reconstruction.VesselNetwork3D, ijk_to_ras: np.ndarray):
    """The centreline polylines (bridges included) in RAS with ``depth`` and ``radius`` point arrays."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonCore import vtkIdTypeArray
    from vtkmodules.vtkCommonDataModel import vtkCellArray

    from .. import meshes

    data = meshes.polydata_from_arrays(reconstruction.to_ras(network.points, ijk_to_ras))
    id_type = vtkIdTypeArray().GetDataType()
    lines = vtkCellArray()
    lines.SetData(numpy_support.numpy_to_vtk(network.offsets.astype(np.int64), deep=True, array_type=id_type),
                  numpy_support.numpy_to_vtk(np.arange(len(network.points), dtype=np.int64), deep=True,
                                             array_type=id_type))
    data.SetLines(lines)
    meshes.add_point_array(data, "depth", network.depth_mm)
    meshes.add_point_array(data, "radius", network.radii)
    return data
