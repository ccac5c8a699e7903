"""MRML adapters used by every Logic: arrays, SimpleITK images, meshes, tables and curves <-> nodes.

Array index order: volume arrays are ``[k, j, i]`` (slice, row, column), as ``slicer.util.arrayFromVolume``
returns them. Geometry is the 4x4 IJK-to-RAS matrix, so oblique directions and anisotropic spacing
survive every round trip. Only Logic classes call these, on the main thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import runtime, slicer_compat
from .errors import InputError

CREATED_BY = "VesselRecon.CreatedBy"
# SCT "Blood vessel" in Slicer's terminology string format (category~type~modifier~region...).
VESSEL_TERMINOLOGY = ("Segmentation category and type - 3D Slicer General Anatomy list"
                      "~SCT^85756007^Tissue~SCT^59820001^Blood vessel~^^"
                      "~Anatomic codes - DICOM master list~^^~^^")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _slicer():
    import slicer

    return slicer


def _scene(scene=None):
    return scene if scene is not None else runtime.setup()


# ---------------------------------------------------------------- matrices


def vtk_matrix(matrix: np.ndarray):
    """numpy 4x4 -> vtkMatrix4x4."""
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    out = vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(matrix[r, c]))
    return out


def numpy_matrix(matrix) -> np.ndarray:
    """vtkMatrix4x4 -> numpy 4x4."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_ras_matrix(spacing: Sequence[float], origin: Sequence[float] = (0, 0, 0),
                      directions: np.ndarray | None = None) -> np.ndarray:
    """IJK-to-RAS from spacing (i, j, k), RAS origin and a 3x3 direction matrix (columns = axes)."""
    matrix = np.eye(4)
    directions = np.eye(3) if directions is None else np.asarray(directions, float)
    matrix[:3, :3] = directions * np.asarray(spacing, float)[None, :]
    matrix[:3, 3] = origin
    return matrix


def spacing_of(ijk_to_ras: np.ndarray) -> np.ndarray:
    """Voxel spacing (i, j, k) in mm from an IJK-to-RAS matrix."""
    return np.linalg.norm(np.asarray(ijk_to_ras)[:3, :3], axis=0)


# ---------------------------------------------------------------- all-or-nothing scene changes


def node_ids(scene) -> list[str]:
    """IDs of every node in the scene, in scene order."""
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def remove_own_outputs(scene, class_name: str, creator: str, stale) -> None:
    """Remove the ``class_name`` nodes this extension (``creator``) made whose name ``stale(name)`` calls stale,
    with their display and storage nodes: outputs of an earlier run that this run did not rewrite. User nodes
    are never removed."""
    nodes = scene.GetNodesByClass(class_name)
    for node in [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]:
        if node.GetAttribute(CREATED_BY) == creator and stale(node.GetName() or ""):
            parts = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
            parts += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
            for part in [node, *filter(None, parts)]:
                scene.RemoveNode(part)


def remove_nodes_added_since(scene, before: set[str]) -> None:
    """Remove every node whose ID is not in ``before`` (newest first), except scene singletons such
    as the subject hierarchy, which Slicer creates once and expects to keep."""
    for node_id in reversed(node_ids(scene)):
        node = scene.GetNodeByID(node_id)
        if node_id not in before and node is not None and not node.GetSingletonTag():
            scene.RemoveNode(node)


@contextlib.contextmanager
def scratch(scene) -> Iterator[None]:
    """Remove, on leaving the block, every node added inside it (temporary export labelmaps and the
    display nodes and colour tables that come with them)."""
    before = set(node_ids(scene))
    try:
        yield
    finally:
        remove_nodes_added_since(scene, before)


class SceneTransaction:
    """Remembers the scene before a Logic writes; :meth:`rollback` removes the nodes added since and
    restores the content of the existing nodes written to (see :func:`will_modify`)."""

    def __init__(self, scene):
        self.scene = scene
        self.before = set(node_ids(scene))
        self.saved: dict[str, list] = {}

    def will_modify(self, node) -> None:
        """Keep a copy of an existing node (and its display nodes) before it is overwritten."""
        node_id = node.GetID() if node is not None else None
        if node_id is None or node_id not in self.before or node_id in self.saved:
            return
        parts = [node] + [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())
                          if node.GetNthDisplayNode(i) is not None] if node.IsA("vtkMRMLDisplayableNode") else [node]
        self.saved[node_id] = [(part, _content_copy(part)) for part in parts]

    def written(self) -> list:
        """The nodes written in the block: those added, then the existing ones saved before being overwritten."""
        added = [self.scene.GetNodeByID(node_id) for node_id in node_ids(self.scene) if node_id not in self.before]
        return added + [parts[0][0] for parts in self.saved.values()]

    def rollback(self) -> None:
        remove_nodes_added_since(self.scene, self.before)
        for parts in self.saved.values():
            for part, copy in parts:
                _keep_live_input(part, copy)
                _detach_live_mesh(part)
                part.CopyContent(copy, True)


def _keep_live_input(part, copy) -> None:
    """A volume display node's content copy carries the pipeline input it had when copied; once the volume's
    image data was replaced that input's producer is deleted, and restoring it crashed VTK. The live node keeps
    the input its (already restored) volume gave it."""
    if hasattr(part, "GetInputImageDataConnection"):
        copy.SetInputImageDataConnection(part.GetInputImageDataConnection())


def _detach_live_mesh(part) -> None:
    """A model node's deep ``CopyContent`` overwrites its current mesh object in place, and that object is the
    failed run's polydata, which the caller may still hold (a cached result shared between runs crashed VTK
    there, intermittently). Detached first, the model gets a fresh copy of its saved mesh instead."""
    if part.IsA("vtkMRMLModelNode"):
        part.SetAndObserveMesh(None)


def _content_copy(node):
    """A detached copy of ``node``'s content. ``CreateNodeByClass`` hands its caller a reference that the
    Python wrapper does not own: give it back (as Slicer does), or every saved copy leaks."""
    copy = node.GetScene().CreateNodeByClass(node.GetClassName())
    copy.UnRegister(None)
    copy.CopyContent(node, True)
    return copy


_ACTIVE = threading.local()


@contextlib.contextmanager
def transaction(scene) -> Iterator[SceneTransaction]:
    """All-or-nothing output writing: if the block raises, the scene is put back as it was.

    Nodes added in the block are removed; existing nodes written through :func:`output_node` (or
    announced with :func:`will_modify`) get their content and display back.
    """
    record = SceneTransaction(scene)
    stack = _ACTIVE.__dict__.setdefault("stack", [])
    stack.append(record)
    try:
        yield record
    except BaseException:
        record.rollback()
        raise
    finally:
        stack.remove(record)


def will_modify(node) -> None:
    """Announce that an existing node is about to be overwritten (restored if the write fails)."""
    for record in getattr(_ACTIVE, "stack", []):
        if record.scene is node.GetScene():
            record.will_modify(node)


def check_node_class(node, class_names: str | Sequence[str], name: str) -> None:
    """Raise :class:`InputError` unless ``node`` (when given) is one of ``class_names`` (or a subclass)."""
    if node is None:
        return
    wanted = (class_names,) if isinstance(class_names, str) else tuple(class_names)
    if not hasattr(node, "IsA") or not any(node.IsA(c) for c in wanted):
        got = node.GetClassName() if hasattr(node, "GetClassName") else type(node).__name__
        readable = " or ".join(c.replace("vtkMRML", "").replace("Node", " node") for c in wanted)
        raise InputError(f"{name} is a {got.replace('vtkMRML', '').replace('Node', ' node')}; select a {readable}.")


# ---------------------------------------------------------------- output nodes


def output_node(class_name: str, name: str, node=None, scene=None, creator: str = "VesselRecon", new: bool = False):
    """The node to write an output into.

    A node passed in is used as is (it must be a ``class_name``). Otherwise a node this extension
    created earlier with the same name is updated, and if none exists a new one is added. User nodes
    are never taken over. Inside a :func:`transaction`, an existing node is saved before it is reused.
    With ``new`` (a file the user loads) a new node is always added, its name made unique as Slicer
    names a second file of the same name, and it is not marked as this extension's.
    """
    if node is not None:
        check_node_class(node, class_name, f"The output node '{node.GetName() if hasattr(node, 'GetName') else node}'")
        will_modify(node)
        return node
    scene = _scene(scene)
    if new:
        return scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    existing = scene.GetNodesByClassByName(class_name, name)
    for index in range(existing.GetNumberOfItems()):
        candidate = existing.GetItemAsObject(index)
        if candidate.GetAttribute(CREATED_BY) == creator:
            will_modify(candidate)
            return candidate
    created = scene.AddNewNodeByClass(class_name, name)
    created.SetAttribute(CREATED_BY, creator)
    return created


# ---------------------------------------------------------------- volumes


def volume_to_array(node) -> tuple[np.ndarray, np.ndarray]:
    """A volume node's voxels (a copy, KJI order) and its IJK-to-RAS matrix.

    :raises InputError: not a volume node, no image data, no scalars, or an empty grid.
    """
    if node is None:
        raise InputError("No volume selected: load or select an image first.")
    check_node_class(node, "vtkMRMLVolumeNode", f"'{node.GetName() if hasattr(node, 'GetName') else node}'")
    if node.GetImageData() is None:
        raise InputError("The volume node has no image data: load an image first.")
    from vtkmodules.util import numpy_support

    image = node.GetImageData()
    dims = image.GetDimensions()
    if image.GetPointData().GetScalars() is None or min(dims) < 1:
        raise InputError(f"The volume node '{node.GetName()}' has image data without voxel values (dimensions "
                         f"{dims}): reload the image.")
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    if scalars.size != int(np.prod(dims)) * image.GetNumberOfScalarComponents():
        raise InputError(f"The volume node '{node.GetName()}' holds {scalars.size} values for a {dims} grid: "
                         "reload the image.")
    components = image.GetNumberOfScalarComponents()
    shape = (dims[2], dims[1], dims[0]) + ((components,) if components > 1 else ())
    return scalars.reshape(shape).copy(), ijk_to_ras_of(node)


def ijk_to_ras_of(node) -> np.ndarray:
    """A volume node's IJK-to-RAS matrix (numpy 4x4)."""
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    matrix = vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return numpy_matrix(matrix)


def check_same_grid(ijk_to_ras: np.ndarray, reference_ijk_to_ras: np.ndarray, shape: Sequence[int], name: str,
                    reference: str = "the input volume") -> None:
    """Refuse a volume of ``shape`` (KJI) whose voxels lie more than a tenth of a voxel away from the
    reference's (another origin, spacing or direction, e.g. a mask saved on an oblique scan's neighbour).

    :raises InputError: saying to resample it onto the reference.
    """
    corners = np.array([[i, j, k, 1.0] for k in (0, shape[0] - 1) for j in (0, shape[1] - 1) for i in (0, shape[2] - 1)])
    shift = np.linalg.norm((corners @ (np.asarray(ijk_to_ras, float) - np.asarray(reference_ijk_to_ras, float)).T)[:, :3],
                           axis=1).max()
    if shift > 0.1 * spacing_of(reference_ijk_to_ras).min():
        raise InputError(f"{name} has the shape of {reference} but lies elsewhere (origin, spacing or direction differ; "
                         f"voxels up to {shift:.2f} mm apart): resample it onto {reference} first.")


def labels_on_grid(node, reference_volume, shape: Sequence[int], name: str,
                   reference: str = "the input volume") -> np.ndarray:
    """A labelmap volume or segmentation node as a KJI label array on ``reference_volume``'s grid of ``shape``:
    a segmentation is exported onto that grid; a labelmap must already lie on it (:func:`check_same_grid`).

    :raises InputError: another shape, or a labelmap elsewhere, saying to resample it onto ``reference``; an empty
        one (no voxel labelled), saying to paint it or leave it unset.
    """
    geometry = None
    if node.IsA("vtkMRMLSegmentationNode"):
        array = segmentation_to_labelmap(node, reference_volume)[0]
    else:
        array, geometry = volume_to_array(node)
    if array.shape != tuple(shape):
        raise InputError(f"{name} has shape {array.shape} but {reference} has {tuple(shape)}: "
                         f"resample it onto {reference} first.")
    if geometry is not None:
        check_same_grid(geometry, ijk_to_ras_of(reference_volume), shape, name, reference)
        check_label_values(array, name)
    if not np.any(array):
        raise InputError(f"{name} is empty (it labels no voxel of {reference}): paint it or leave it unset.")
    return array


MAX_LABELS = 1000   # a parcellation has a few hundred labels at most; a scan has thousands of grey values


def check_label_values(array: np.ndarray, name: str) -> None:
    """:class:`InputError` when ``array`` does not look like a label map: fractional values, or more than
    ``MAX_LABELS`` distinct values (the scan itself chosen as the mask)."""
    values = np.unique(array)
    fractional = np.issubdtype(values.dtype, np.floating) and not np.array_equal(values, np.round(values))
    if fractional or values.size > MAX_LABELS:
        kind = "fractional values" if fractional else f"{values.size} distinct values"
        raise InputError(f"{name} has {kind}: it looks like an image, not a label map (every non-zero voxel "
                         "would count as a label). Choose the label map or segmentation, or threshold the "
                         "image into one first (e.g. Segment Editor > Threshold).")


def array_to_volume(array: np.ndarray, ijk_to_ras: np.ndarray, name: str, node=None, scene=None,
                    labelmap: bool = False, color_node_id: str | None = None,
                    window_level: tuple[float, float] | None = None, creator: str = "VesselRecon", new: bool = False):
    """Write a KJI array and its IJK-to-RAS geometry into a (new or given) volume node.

    :param array: ``[k, j, i]`` voxels; 2D arrays become a single slice.
    :param ijk_to_ras: 4x4 IJK-to-RAS matrix.
    :param name: node name for new nodes.
    :param node: existing output node to overwrite (only when the user passed it as output).
    :param labelmap: create a ``vtkMRMLLabelMapVolumeNode`` instead of a scalar volume.
    :param color_node_id: colour table for the display node (e.g. a depth colour table).
    :param window_level: optional (window, level) for display.
    :param new: always a new node (a loaded file, see :func:`output_node`).
    """
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkImageData

    array = np.ascontiguousarray(array if np.ndim(array) == 3 else np.asarray(array)[None])
    cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = output_node(cls, name, node, scene, creator, new)
    image = vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    vtk_array = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    image.GetPointData().SetScalars(vtk_array)
    node.SetIJKToRASMatrix(vtk_matrix(ijk_to_ras))
    node.SetAndObserveImageData(image)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if color_node_id:
        display.SetAndObserveColorNodeID(color_node_id)
    if window_level and hasattr(display, "SetWindowLevel"):
        display.AutoWindowLevelOff()
        display.SetWindowLevel(*window_level)
    return node


def sitk_to_volume(image, name: str, node=None, scene=None, labelmap: bool = False, new: bool = False):
    """A SimpleITK image (LPS) as a volume node (RAS); ``new`` as in :func:`array_to_volume`."""
    import SimpleITK as sitk

    if image.GetDimension() != 3:
        raise InputError(f"'{name}' is a {image.GetDimension()}D image; a 3D volume (NRRD, NIfTI, MHA or a DICOM "
                         "series) is needed here.")
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(f"'{name}' has {image.GetNumberOfComponentsPerPixel()} components per voxel (a colour, vector "
                         "or 4D image); a scalar (grayscale) 3D volume is needed here.")
    array = sitk.GetArrayFromImage(image)
    if array.dtype.itemsize == 8 and array.dtype.kind in "iu" or array.dtype == np.int8:  # VTK's writers refuse
        array = array.astype(np.int16 if array.dtype == np.int8 else np.float64)  # these: the .mrb failed after a run
    direction = np.array(image.GetDirection()).reshape(3, 3)
    lps = ijk_to_ras_matrix(image.GetSpacing(), image.GetOrigin(), direction)
    return array_to_volume(array, LPS_TO_RAS @ lps, name, node, scene, labelmap, new=new)


def volume_to_sitk(node):
    """A volume node (RAS) as a SimpleITK image (LPS), with spacing, origin and direction."""
    import SimpleITK as sitk

    array, ijk_to_ras = volume_to_array(node)
    lps = LPS_TO_RAS @ ijk_to_ras
    spacing = spacing_of(lps)
    image = sitk.GetImageFromArray(array, isVector=array.ndim == 4)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in lps[:3, 3]))
    image.SetDirection(tuple((lps[:3, :3] / spacing[None, :]).ravel().tolist()))
    return image


# ---------------------------------------------------------------- segmentations


@dataclass
class SegmentSpec:
    """How one label value of a labelmap becomes a named, coloured segment."""

    label: int
    name: str
    color: tuple[float, float, float] = (0.85, 0.2, 0.2)
    terminology: str | None = VESSEL_TERMINOLOGY


def labelmap_to_segmentation(labels: np.ndarray, ijk_to_ras: np.ndarray, segments: Sequence[SegmentSpec],
                             name: str, node=None, reference_volume=None, scene=None,
                             closed_surface: bool = False, creator: str = "VesselRecon"):
    """Write a KJI label array as segments of a segmentation node on the given geometry.

    :param labels: integer array ``[k, j, i]`` (2D arrays become one slice).
    :param ijk_to_ras: geometry of ``labels``.
    :param segments: label value, name, colour and terminology of each segment to create.
    :param reference_volume: volume whose geometry the segmentation references (usually the input).
    :param closed_surface: also build the closed-surface representation for 3D display.
    """
    slicer = _slicer()
    scene = _scene(scene)
    node = output_node("vtkMRMLSegmentationNode", name, node, scene, creator)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    if reference_volume is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    segmentation = node.GetSegmentation()
    segmentation.RemoveAllSegments()
    labels = np.asarray(labels)
    for spec in segments:
        oriented = _oriented_labelmap((labels == spec.label).astype(np.uint8), ijk_to_ras)
        segment = slicer.vtkSegment()
        segment.SetName(spec.name)
        segment.SetColor(*spec.color)
        if spec.terminology:
            slicer_compat.set_segment_terminology(segment, spec.terminology)  # 5.8: a tag, 5.10+: a setter
        segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), oriented)
        segmentation.AddSegment(segment, spec.name)
    if closed_surface:
        node.CreateClosedSurfaceRepresentation()
    return node


def _oriented_labelmap(mask: np.ndarray, ijk_to_ras: np.ndarray):
    from vtkmodules.util import numpy_support

    slicer = _slicer()
    mask = np.ascontiguousarray(mask if mask.ndim == 3 else mask[None])
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(mask.ravel(), deep=True))
    image.SetImageToWorldMatrix(vtk_matrix(ijk_to_ras))
    return image


def segmentation_to_labelmap(node, reference_volume=None, segment_ids: Sequence[str] | None = None
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Export segments to a KJI label array (1..n in segment order) on the reference geometry.

    The temporary labelmap, its display node and colour table never outlive the call. A segmentation
    without segments gives an all-zero array on ``reference_volume``'s grid.

    :raises InputError: not a segmentation node, or empty without a reference volume to size it.
    """
    slicer = _slicer()
    check_node_class(node, "vtkMRMLSegmentationNode", f"'{node.GetName() if hasattr(node, 'GetName') else node}'")
    scene = node.GetScene()
    ids = list(segment_ids or node.GetSegmentation().GetSegmentIDs())
    if not ids:
        if reference_volume is None:
            raise InputError(f"The segmentation '{node.GetName()}' has no segments: paint one or select another.")
        array, matrix = volume_to_array(reference_volume)
        return np.zeros(array.shape[:3], np.uint8), matrix
    with scratch(scene):
        label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__vesselrecon_export")
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if not logic.ExportSegmentsToLabelmapNode(node, _string_array(ids), label_node, reference_volume):
            if reference_volume is not None and _all_segments_empty(node, ids):
                array, matrix = volume_to_array(reference_volume)
                return np.zeros(array.shape[:3], np.uint8), matrix
            raise InputError(f"The segmentation '{node.GetName()}' could not be converted to a labelmap: "
                             "check that it has a binary labelmap representation.")
        return volume_to_array(label_node)


def _all_segments_empty(node, ids) -> bool:
    """True when none of the segments holds a single voxel (Slicer cannot export those)."""
    slicer = _slicer()
    name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    for segment_id in ids:
        labelmap = node.GetSegmentation().GetSegment(segment_id).GetRepresentation(name)
        if labelmap is not None and labelmap.GetPointData().GetScalars() is not None:
            from vtkmodules.util import numpy_support

            if numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).any():
                return False
    return True


def _string_array(values):
    from vtkmodules.vtkCommonCore import vtkStringArray

    out = vtkStringArray()
    for value in values:
        out.InsertNextValue(value)
    return out


# ---------------------------------------------------------------- models, tables, curves


def polydata_to_model(polydata, name: str, color: tuple[float, float, float] = (0.9, 0.3, 0.3),
                      opacity: float = 1.0, scalars: str | None = None, color_node_id: str | None = None,
                      scalar_range: tuple[float, float] | None = None, node=None, scene=None,
                      creator: str = "VesselRecon"):
    """Put a vtkPolyData (RAS, mm) into a model node with colour, opacity and optional scalar colouring.

    :param scalars: name of a point-data array to colour by (for example ``"depth"``).
    :param color_node_id: colour table for the scalars.
    :param scalar_range: fixed scalar range; the data range when omitted.
    """
    node = output_node("vtkMRMLModelNode", name, node, scene, creator)
    node.SetAndObservePolyData(polydata)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetColor(*color)
    display.SetOpacity(opacity)
    if scalars:
        display.SetActiveScalarName(scalars)
        display.SetScalarVisibility(True)
        if color_node_id:
            display.SetAndObserveColorNodeID(color_node_id)
        if scalar_range:
            display.SetScalarRangeFlag(display.UseManualScalarRange)
            display.SetScalarRange(*scalar_range)
    return node


def rows_to_table(rows: Sequence[dict[str, Any]], name: str, node=None, scene=None,
                  creator: str = "VesselRecon"):
    """Rows of ``{column: value}`` into a table node: counts (every value an integer) as int columns, other
    numbers as double columns, anything else as strings."""
    node = output_node("vtkMRMLTableNode", name, node, scene, creator)
    table = node.GetTable()
    table.Initialize()
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for column in columns:
        array = _column_array([row.get(column) for row in rows])
        array.SetName(column)
        table.AddColumn(array)
    node.Modified()
    return node


def _column_array(values: list):
    """A VTK array holding ``values``: int, double or string (see :func:`rows_to_table`)."""
    from vtkmodules.vtkCommonCore import vtkDoubleArray, vtkIntArray, vtkStringArray

    def is_number(v, kinds):
        return isinstance(v, kinds) and not isinstance(v, bool)

    if values and all(is_number(v, (int, np.integer)) and abs(int(v)) < 2**31 for v in values):
        array, convert = vtkIntArray(), int
    elif all(is_number(v, (int, float, np.integer, np.floating)) for v in values):
        array, convert = vtkDoubleArray(), float
    else:
        array, convert = vtkStringArray(), lambda v: "" if v is None else str(v)
    for value in values:
        array.InsertNextValue(convert(value))
    return array


def table_to_rows(node) -> list[dict[str, Any]]:
    """A table node's rows as dicts (inverse of :func:`rows_to_table`)."""
    table = node.GetTable()
    columns = [table.GetColumn(c) for c in range(table.GetNumberOfColumns())]
    return [{col.GetName(): col.GetValue(r) for col in columns} for r in range(table.GetNumberOfRows())]


def polyline_to_curve(points_ras: np.ndarray, name: str, radii: np.ndarray | None = None, node=None,
                      scene=None, color: tuple[float, float, float] = (1.0, 0.8, 0.1),
                      creator: str = "VesselRecon"):
    """A polyline (RAS mm) as a markups curve; ``radii`` become its ``Radius`` point measurement."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonCore import vtkPoints

    node = output_node("vtkMRMLMarkupsCurveNode", name, node, scene, creator)
    points = vtkPoints()
    points.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(points_ras, dtype=float), deep=True))
    node.SetCurveTypeToLinear()
    node.SetControlPointPositionsWorld(points)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetSelectedColor(*color)
    node.GetDisplayNode().SetPointLabelsVisibility(False)
    if radii is not None:
        _set_curve_radius(node, np.asarray(radii, float))
    return node


def _set_curve_radius(node, radii: np.ndarray) -> None:
    from vtkmodules.util import numpy_support

    slicer = _slicer()
    measurement = node.GetMeasurement("Radius") or slicer.vtkMRMLStaticMeasurement()
    measurement.SetName("Radius")
    measurement.SetUnits("mm")
    values = numpy_support.numpy_to_vtk(np.ascontiguousarray(radii), deep=True)
    values.SetName("Radius")
    measurement.SetControlPointValues(values)
    measurement.SetEnabled(True)
    if node.GetMeasurement("Radius") is None:
        node.AddMeasurement(measurement)


def curve_radii(node) -> np.ndarray | None:
    """The per-control-point ``Radius`` measurement of a curve, if any."""
    from vtkmodules.util import numpy_support

    measurement = node.GetMeasurement("Radius")
    if measurement is None or measurement.GetControlPointValues() is None:
        return None
    return numpy_support.vtk_to_numpy(measurement.GetControlPointValues()).copy()


def color_table(name: str, colors: Sequence[Sequence[float]], scene=None, n: int = 256):
    """A continuous colour table node interpolating ``colors`` (RGB 0..1) over ``n`` entries."""
    node = output_node("vtkMRMLColorTableNode", name, None, scene)
    node.SetTypeToUser()
    node.SetNumberOfColors(n)
    anchors = np.asarray(colors, float)
    stops = np.linspace(0, 1, len(anchors))
    for index, t in enumerate(np.linspace(0, 1, n)):
        rgb = [np.interp(t, stops, anchors[:, c]) for c in range(3)]
        node.SetColor(index, f"{index}", *rgb, 1.0)
    return node


# ---------------------------------------------------------------- scenes


def save_scene(path: str | Path, scene=None) -> Path:
    """Save the scene with all its data as a Slicer ``.mrb`` bundle.

    The bundle is written under a temporary name in the target folder and then moved onto ``path``,
    so an interrupted save never leaves a corrupt ``.mrb`` under the final name.
    """
    from .atomic import atomic_path

    scene = _scene(scene)
    path = Path(path)
    _ensure_storage_nodes(scene)
    with atomic_path(path) as temporary:
        if not scene.WriteToMRB(str(temporary)):
            raise OSError(f"Could not write the scene to {path}.")
    return path


def _ensure_storage_nodes(scene) -> None:
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if node.IsA("vtkMRMLStorableNode") and node.GetStorageNode() is None:
            node.AddDefaultStorageNode()


def load_scene(path: str | Path, scene=None, clear: bool = True):
    """Load a ``.mrb`` bundle into the scene (cleared first by default) and return the scene."""
    scene = _scene(scene)
    if not Path(path).is_file():
        raise FileNotFoundError(f"Scene file {path} does not exist.")
    if clear:
        scene.Clear(False)
    if not scene.ReadFromMRB(str(path)):
        raise OSError(f"Could not read the scene {path}.")
    return scene
