"""Mesh utilities on vtkPolyData (positions in mm, RAS): tubes, iso-surfaces, cleaning, measures, I/O."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonCore import vtkIdTypeArray, vtkPoints
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkImageData, vtkPolyData

import vtkmodules.vtkFiltersCore as fcore
import vtkmodules.vtkFiltersGeneral as fgeneral


def points_of(polydata: vtkPolyData) -> np.ndarray:
    """(N, 3) float64 copy of a polydata's points."""
    if polydata.GetPoints() is None:
        return np.zeros((0, 3))
    return numpy_support.vtk_to_numpy(polydata.GetPoints().GetData()).astype(np.float64)


def polydata_from_arrays(points: np.ndarray, faces: Sequence[Sequence[int]] | np.ndarray | None = None,
                         lines: Sequence[Sequence[int]] | None = None) -> vtkPolyData:
    """Build a vtkPolyData from points and polygon faces (any size) and/or polylines."""
    polydata = vtkPolyData()
    vtk_points = vtkPoints()
    vtk_points.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(points, dtype=np.float64), deep=True))
    polydata.SetPoints(vtk_points)
    if faces is not None and len(faces):
        polydata.SetPolys(_cell_array(faces))
    if lines is not None and len(lines):
        polydata.SetLines(_cell_array(lines))
    return polydata


def _cell_array(cells) -> vtkCellArray:
    array = vtkCellArray()
    for cell in cells:
        array.InsertNextCell(len(cell))
        for index in cell:
            array.InsertCellPoint(int(index))
    return array


def add_point_array(polydata: vtkPolyData, name: str, values: np.ndarray, active: bool = False) -> None:
    """Attach a per-point scalar array."""
    array = numpy_support.numpy_to_vtk(np.ascontiguousarray(values, dtype=np.float32), deep=True)
    array.SetName(name)
    polydata.GetPointData().AddArray(array)
    if active:
        polydata.GetPointData().SetActiveScalars(name)


def tube(points: np.ndarray, radii: np.ndarray | float, sides: int = 16, capping: bool = True,
         point_arrays: dict[str, np.ndarray] | None = None, offsets: np.ndarray | None = None) -> vtkPolyData:
    """Sweep tubes of per-point radius (mm) along polylines with one ``vtkTubeFilter``.

    ``offsets`` (VTK cell offsets ``[0, ..., len(points)]``) split ``points`` into polylines, one when omitted;
    ``point_arrays`` (for example ``{"depth": ...}``) are carried onto the tube surface. Coincident points
    (each cap's rim and its end ring) are merged, so every capped tube is watertight.
    """
    points = np.asarray(points, float)
    radii = np.broadcast_to(np.asarray(radii, float), (len(points),))
    line = polydata_from_arrays(points)
    line.SetLines(_polylines(len(points), offsets))
    add_point_array(line, "radius", radii, active=True)
    for name, values in (point_arrays or {}).items():
        add_point_array(line, name, values)
    tube_filter = fcore.vtkTubeFilter()
    tube_filter.SetInputData(line)
    tube_filter.SetNumberOfSides(sides)
    tube_filter.SetVaryRadiusToVaryRadiusByAbsoluteScalar()
    tube_filter.SetCapping(capping)
    output = fcore.vtkCleanPolyData()
    output.SetInputConnection(tube_filter.GetOutputPort())
    output.Update()
    return triangulate(output.GetOutput())


def _polylines(count: int, offsets: np.ndarray | None = None) -> vtkCellArray:
    """Polylines over points ``0..count-1`` cut at ``offsets`` (one polyline when omitted)."""
    offsets = np.array([0, count]) if offsets is None else offsets
    id_type = vtkIdTypeArray().GetDataType()
    cells = vtkCellArray()
    cells.SetData(numpy_support.numpy_to_vtk(np.asarray(offsets, np.int64), deep=True, array_type=id_type),
                  numpy_support.numpy_to_vtk(np.arange(count, dtype=np.int64), deep=True, array_type=id_type))
    return cells


def triangulate(polydata: vtkPolyData) -> vtkPolyData:
    """Triangles only (strips and polygons split)."""
    triangles = fcore.vtkTriangleFilter()
    triangles.SetInputData(polydata)
    triangles.Update()
    return triangles.GetOutput()


def append(polydatas: Sequence[vtkPolyData]) -> vtkPolyData:
    """One polydata holding all inputs (arrays kept where all inputs have them)."""
    appender = fcore.vtkAppendPolyData()
    for polydata in polydatas:
        appender.AddInputData(polydata)
    appender.Update()
    return appender.GetOutput()


def transform(polydata: vtkPolyData, matrix: np.ndarray) -> vtkPolyData:
    """Apply a 4x4 matrix to a polydata's points (returns a new polydata)."""
    from vtkmodules.vtkCommonTransforms import vtkTransform

    from .mrml import vtk_matrix

    vtk_transform = vtkTransform()
    vtk_transform.SetMatrix(vtk_matrix(np.asarray(matrix, float)))
    transformer = fgeneral.vtkTransformPolyDataFilter()
    transformer.SetInputData(polydata)
    transformer.SetTransform(vtk_transform)
    transformer.Update()
    return transformer.GetOutput()


def isosurface(volume: np.ndarray, ijk_to_ras: np.ndarray, level: float = 0.0,
               compute_normals: bool = True) -> vtkPolyData:
    """Iso-surface of a KJI array at ``level`` with VTK's threaded flying edges, in RAS mm."""
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    image = vtkImageData()
    image.SetDimensions(volume.shape[2], volume.shape[1], volume.shape[0])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(volume.ravel(), deep=False))
    flying_edges = fcore.vtkFlyingEdges3D()
    flying_edges.SetInputData(image)
    flying_edges.SetValue(0, level)
    flying_edges.SetComputeNormals(False)
    flying_edges.SetComputeScalars(False)
    flying_edges.Update()
    surface = transform(flying_edges.GetOutput(), ijk_to_ras)
    if compute_normals and surface.GetNumberOfPoints():
        surface = normals(surface)
    return surface


def normals(polydata: vtkPolyData) -> vtkPolyData:
    """Consistently oriented point normals (for smooth rendering)."""
    normal_filter = fcore.vtkPolyDataNormals()
    normal_filter.SetInputData(polydata)
    normal_filter.ConsistencyOn()
    normal_filter.SplittingOff()
    normal_filter.AutoOrientNormalsOn()
    normal_filter.Update()
    return normal_filter.GetOutput()


def _region_sizes(polydata: vtkPolyData) -> np.ndarray:
    """Point count of each connected region, in VTK's region order."""
    connectivity = fcore.vtkPolyDataConnectivityFilter()
    connectivity.SetInputData(polydata)
    connectivity.SetExtractionModeToAllRegions()
    connectivity.Update()
    return numpy_support.vtk_to_numpy(connectivity.GetRegionSizes())


def component_sizes(polydata: vtkPolyData) -> np.ndarray:
    """Number of points of each connected component, largest first."""
    return np.sort(_region_sizes(polydata))[::-1]


def remove_small_components(polydata: vtkPolyData, min_points: int) -> vtkPolyData:
    """Drop connected components with fewer than ``min_points`` points."""
    sizes = _region_sizes(polydata)
    keep = fcore.vtkPolyDataConnectivityFilter()
    keep.SetInputData(polydata)
    keep.SetExtractionModeToSpecifiedRegions()
    for region in np.flatnonzero(sizes >= min_points):
        keep.AddSpecifiedRegion(int(region))
    keep.Update()
    cleaner = fcore.vtkCleanPolyData()
    cleaner.SetInputConnection(keep.GetOutputPort())
    cleaner.Update()
    return cleaner.GetOutput()


def boundary_edge_count(polydata: vtkPolyData) -> int:
    """Boundary plus non-manifold edges; 0 for a watertight manifold surface."""
    edges = fcore.vtkFeatureEdges()
    edges.SetInputData(polydata)
    edges.BoundaryEdgesOn()
    edges.NonManifoldEdgesOn()
    edges.FeatureEdgesOff()
    edges.ManifoldEdgesOff()
    edges.Update()
    return edges.GetOutput().GetNumberOfCells()


def is_watertight(polydata: vtkPolyData) -> bool:
    """True when the surface has no boundary and no non-manifold edges."""
    return polydata.GetNumberOfCells() > 0 and boundary_edge_count(polydata) == 0


def surface_area_and_volume(polydata: vtkPolyData) -> tuple[float, float]:
    """Surface area (mm²) and enclosed volume (mm³) of a closed triangle mesh."""
    mass = fcore.vtkMassProperties()
    mass.SetInputData(triangulate(polydata))
    mass.Update()
    return float(mass.GetSurfaceArea()), float(mass.GetVolume())


_WRITERS = {".vtp": "vtkXMLPolyDataWriter", ".vtk": "vtkPolyDataWriter", ".stl": "vtkSTLWriter",
            ".ply": "vtkPLYWriter", ".obj": "vtkOBJWriter"}
_READERS = {".vtp": "vtkXMLPolyDataReader", ".vtk": "vtkPolyDataReader", ".stl": "vtkSTLReader",
            ".ply": "vtkPLYReader", ".obj": "vtkOBJReader"}


def _io_class(path: Path, table: dict[str, str]):
    import vtkmodules.all as vtk_all

    if path.suffix.lower() not in table:
        raise ValueError(f"Unsupported mesh format {path.suffix!r}; use one of {', '.join(table)}.")
    return getattr(vtk_all, table[path.suffix.lower()])()


def save_polydata(polydata: vtkPolyData, path: str | Path) -> Path:
    """Write a mesh; the format follows the extension (.vtp .vtk .stl .ply .obj). The file appears
    under its final name only once complete (:func:`VesselReconLib.atomic.atomic_path`)."""
    from .atomic import atomic_path

    path = Path(path)
    writer = _io_class(path, _WRITERS)
    writer.SetInputData(polydata)
    with atomic_path(path) as temporary:
        writer.SetFileName(str(temporary))
        if not writer.Write():
            raise OSError(f"Could not write {path}.")
    return path


def load_polydata(path: str | Path) -> vtkPolyData:
    """Read a mesh written by :func:`save_polydata` (or any file of those formats)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Mesh file {path} does not exist.")
    reader = _io_class(path, _READERS)
    reader.SetFileName(str(path))
    reader.Update()
    return reader.GetOutput()


RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_SLICER_HEADER = "3D Slicer output. SPACE="


def save_polydata_lps(polydata_ras: vtkPolyData, path: str | Path) -> Path:
    """Write a RAS mesh to disk in LPS, with the coordinate system marked in the file as Slicer does.

    Follows ``vtkMRMLModelStorageNode::WriteDataInternal``: points (and normals) are flipped RAS -> LPS,
    ``.stl`` is binary with the header ``3D Slicer output. SPACE=LPS``, ``.vtk`` is binary legacy 4.2 with
    the same header, ``.vtp`` is zlib-compressed with a ``SPACE`` string field array, ``.ply`` is binary
    with a ``SPACE=LPS`` comment and ``.obj`` carries the header as its comment. Slicer therefore loads
    the file on top of the CT it came from, and :func:`load_polydata_ras` reads it back.
    """
    import vtkmodules.all as vtk_all

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _WRITERS:
        raise ValueError(f"Unsupported mesh format {path.suffix!r}; use one of {', '.join(_WRITERS)}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    lps = transform(polydata_ras, RAS_TO_LPS) if polydata_ras.GetNumberOfPoints() else vtkPolyData()
    header = _SLICER_HEADER + "LPS"
    if suffix == ".vtp":
        data = vtkPolyData()
        data.ShallowCopy(lps)
        space = vtk_all.vtkStringArray()
        space.SetName("SPACE")
        space.InsertNextValue("LPS")
        data.GetFieldData().AddArray(space)
        writer = vtk_all.vtkXMLPolyDataWriter()
        writer.SetInputData(data)
        writer.SetCompressorTypeToZLib()
        writer.SetDataModeToAppended()
    elif suffix == ".obj":
        writer = vtk_all.vtkOBJWriter()
        writer.SetInputData(lps)
        _write_obj_with_comment(writer, path, header)
        return path
    else:
        writer = getattr(vtk_all, _WRITERS[suffix])()
        writer.SetInputData(triangulate(lps) if suffix in (".stl", ".ply") else lps)
        writer.SetFileTypeToBinary()
        if suffix == ".ply":
            writer.AddComment("SPACE=LPS")
        else:
            writer.SetHeader(header)
        if suffix == ".vtk":
            writer.SetFileVersion(42)
    from .atomic import atomic_path

    with atomic_path(path) as temporary:
        writer.SetFileName(str(temporary))
        if not writer.Write():
            raise OSError(f"Could not write {path}.")
    return path


def _write_obj_with_comment(writer, path: Path, header: str) -> None:
    writer.SetFileName(str(path))
    if not writer.Write():
        raise OSError(f"Could not write {path}.")
    body = path.read_text(encoding="utf-8")
    path.write_text(f"# {header}\n{body}", encoding="utf-8")


def mesh_coordinate_system(path: str | Path) -> str | None:
    """'LPS' or 'RAS' when the file marks its coordinate system the way Slicer does, else None."""
    import re

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".vtp":
        field = load_polydata(path).GetFieldData().GetAbstractArray("SPACE")
        return str(field.GetValue(0)).upper() if field is not None and field.GetNumberOfValues() else None
    with open(path, "rb") as handle:
        head = handle.read(4096 if suffix != ".stl" else 80).decode("latin-1")
    match = re.search(r"SPACE=(RAS|LPS)", head, flags=re.IGNORECASE)
    return match.group(1).upper() if match else None


def load_polydata_ras(path: str | Path) -> vtkPolyData:
    """Read a mesh into RAS the way Slicer does: files marked (or, like Slicer, assumed) LPS are flipped."""
    polydata = load_polydata(path)
    if mesh_coordinate_system(path) == "RAS":
        return polydata
    return transform(polydata, RAS_TO_LPS) if polydata.GetNumberOfPoints() else polydata
