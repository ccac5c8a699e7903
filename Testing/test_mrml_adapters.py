"""Round trips of the MRML adapters on a real headless scene, including oblique and anisotropic geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from vtkmodules.vtkFiltersSources import vtkSphereSource

from VesselReconLib import meshes, mrml


def oblique_matrix(spacing=(0.5, 0.7, 2.0), origin=(10.0, -5.0, 3.0), seed=0):
    rng = np.random.default_rng(seed)
    directions, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(directions) < 0:
        directions[:, 0] *= -1
    return mrml.ijk_to_ras_matrix(spacing, origin, directions)


def test_volume_round_trip_keeps_voxels_and_oblique_geometry(scene):
    matrix = oblique_matrix()
    voxels = np.random.default_rng(1).random((6, 9, 11)).astype(np.float32)
    node = mrml.array_to_volume(voxels, matrix, "oblique", scene=scene)
    back, back_matrix = mrml.volume_to_array(node)
    assert back.shape == (6, 9, 11)
    np.testing.assert_array_equal(back, voxels)
    np.testing.assert_allclose(back_matrix, matrix, atol=1e-12)
    np.testing.assert_allclose(mrml.spacing_of(back_matrix), [0.5, 0.7, 2.0])


def test_kji_order_matches_ras_positions(scene):
    matrix = mrml.ijk_to_ras_matrix((0.5, 1.0, 3.0), (100.0, 0.0, -20.0))
    voxels = np.zeros((4, 5, 6), np.float32)
    voxels[3, 1, 5] = 1.0  # k=3, j=1, i=5
    node = mrml.array_to_volume(voxels, matrix, "kji", scene=scene)
    _, back_matrix = mrml.volume_to_array(node)
    ras = back_matrix @ np.array([5, 1, 3, 1.0])
    np.testing.assert_allclose(ras[:3], [100 + 2.5, 1.0, -20 + 9.0])


def test_sitk_round_trip_converts_lps_to_ras(scene):
    image = sitk.GetImageFromArray(np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4))
    image.SetSpacing((0.4, 0.6, 2.5))
    image.SetOrigin((10.0, 20.0, 30.0))
    node = mrml.sitk_to_volume(image, "from sitk", scene=scene)
    _, matrix = mrml.volume_to_array(node)
    np.testing.assert_allclose(matrix[:3, 3], [-10.0, -20.0, 30.0])  # LPS -> RAS flips x and y
    back = mrml.volume_to_sitk(node)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin())
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing())
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_labelmap_to_segmentation_names_colours_and_geometry(scene):
    matrix = oblique_matrix(seed=3)
    labels = np.zeros((5, 8, 10), np.uint8)
    labels[1:4, 2:6, 3:7] = 1
    labels[2, 6:8, 0:2] = 2
    reference = mrml.array_to_volume(labels.astype(np.float32), matrix, "reference", scene=scene)
    node = mrml.labelmap_to_segmentation(
        labels, matrix, [mrml.SegmentSpec(1, "Artery", (1, 0, 0)), mrml.SegmentSpec(2, "Vein", (0, 0, 1))],
        "vessels", reference_volume=reference, scene=scene)
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(2)] == ["Artery", "Vein"]
    np.testing.assert_allclose(segmentation.GetNthSegment(1).GetColor(), (0, 0, 1))
    tag = segmentation.GetNthSegment(0).GetTerminology()
    assert "Blood vessel" in tag
    exported, exported_matrix = mrml.segmentation_to_labelmap(node, reference)
    np.testing.assert_array_equal(exported, labels)
    np.testing.assert_allclose(exported_matrix, matrix, atol=1e-9)


def test_output_node_never_takes_over_a_user_node(scene):
    user = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Depth map")
    created = mrml.output_node("vtkMRMLScalarVolumeNode", "Depth map", scene=scene)
    assert created is not user
    again = mrml.output_node("vtkMRMLScalarVolumeNode", "Depth map", scene=scene)
    assert again is created
    assert mrml.output_node("vtkMRMLScalarVolumeNode", "x", node=user, scene=scene) is user


def test_model_table_curve_and_scene_round_trip(scene, tmp_path):
    matrix = oblique_matrix(spacing=(0.3, 0.3, 1.5), seed=5)
    voxels = np.random.default_rng(2).random((4, 6, 7)).astype(np.float32)
    mrml.array_to_volume(voxels, matrix, "volume", scene=scene)
    sphere = vtkSphereSource()
    sphere.SetRadius(4.0)
    sphere.Update()
    surface = sphere.GetOutput()
    meshes.add_point_array(surface, "depth", meshes.points_of(surface)[:, 2])
    ramp = mrml.color_table("Depth ramp", [(1, 0, 0), (0, 0, 1)], scene=scene)
    mrml.polydata_to_model(surface, "sphere", color=(0.1, 0.8, 0.2), opacity=0.5, scalars="depth",
                           color_node_id=ramp.GetID(), scalar_range=(-4, 4), scene=scene)
    mrml.rows_to_table([{"segment": "a", "length_mm": 1.5, "pieces": 3}, {"segment": "b", "length_mm": 2, "pieces": 12}],
                       "lengths", scene=scene)
    curve_points = np.array([[0, 0, 0], [1, 2, 3], [4, 5, 6.0]])
    mrml.polyline_to_curve(curve_points, "centerline", radii=np.array([1.0, 1.5, 2.0]), scene=scene)
    path = mrml.save_scene(tmp_path / "scene.mrb", scene)

    mrml.load_scene(path, scene)
    volume = scene.GetFirstNodeByName("volume")
    back, back_matrix = mrml.volume_to_array(volume)
    np.testing.assert_allclose(back, voxels)
    np.testing.assert_allclose(back_matrix, matrix, atol=1e-6)
    model = scene.GetFirstNodeByName("sphere")
    assert model.GetPolyData().GetNumberOfPoints() == surface.GetNumberOfPoints()
    display = model.GetDisplayNode()
    assert display.GetActiveScalarName() == "depth"
    assert display.GetOpacity() == pytest.approx(0.5)
    np.testing.assert_allclose(display.GetScalarRange(), (-4, 4))
    rows = mrml.table_to_rows(scene.GetFirstNodeByName("lengths"))   # counts stay integers, lengths doubles
    assert rows == [{"segment": "a", "length_mm": 1.5, "pieces": 3}, {"segment": "b", "length_mm": 2.0, "pieces": 12}]
    assert [type(rows[1][k]) for k in ("length_mm", "pieces")] == [float, int]
    curve = scene.GetFirstNodeByName("centerline")
    positions = np.array([curve.GetNthControlPointPositionWorld(i) for i in range(3)])
    np.testing.assert_allclose(positions, curve_points)
    np.testing.assert_allclose(mrml.curve_radii(curve), [1.0, 1.5, 2.0])


def test_load_scene_missing_file_is_clear(scene, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mrml.load_scene(tmp_path / "nope.mrb", scene)


def test_a_headless_folder_batch_leaves_the_users_scene_alone(scene, tmp_path):
    """Outside Slicer the folder batch (and the sample bundles) used the headless scene itself as their
    "private" scene: a script's own nodes and even the default colour tables were cleared by the batch."""
    from VesselReconLib import folder_batch

    class Thresholds:
        method = "vcnet"

        def __init__(self, scene):
            self.scene = scene

        def process(self, inputVolume):
            colours.append(self.scene.GetNodeByID("vtkMRMLColorTableNodeLabels") is not None)
            array, matrix = mrml.volume_to_array(inputVolume)
            return mrml.array_to_volume((array > 0.5).astype(np.uint8), matrix, "mask", scene=self.scene,
                                        labelmap=True)

    for name in ("a", "b"):
        sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)),
                        str(tmp_path / f"{name}.nrrd"))
    mine = mrml.array_to_volume(np.ones((2, 2, 2), np.float32), np.eye(4), "mine", scene=scene)
    nodes, colours = scene.GetNumberOfNodes(), []
    result = folder_batch.process_folder(Thresholds, "volume", tmp_path, tmp_path / "out", {})
    assert [row["status"] for row in result.rows] == ["ok", "ok"]
    assert scene.IsNodePresent(mine) and scene.GetNumberOfNodes() == nodes
    assert colours == [True, True], "each input's scene has Slicer's default colour tables"
    assert mrml.load_scene(tmp_path / "out" / "b.mrb", scene).GetFirstNodeByName("mask") is not None


def test_the_folder_batch_csv_carries_each_runs_measurements():
    """OCTADepth keeps its measurements in ``summary()`` and Angio3D in ``qca``: their batch CSVs held only the
    pixel size and message, or the epipolar error, and no vessel length or stenosis."""
    from VesselReconLib import folder_batch

    class Result:
        def __init__(self):
            self.fieldOfViewMm, self.message, self.epipolarErrorPx = 3.0, "pixel size from the file name", 0.1
            self.qca = {"length_mm": 91.4, "percent_diameter_stenosis": 9.1, "warnings": [], "unreliable": False}

        def summary(self):
            return {"field_of_view_mm": 3.0, "vessel_length_mm": 71.05, "segments": 103, "warnings": []}

    assert folder_batch.scalar_metrics(Result()) == {
        "message": "pixel size from the file name", "epipolarErrorPx": 0.1, "field_of_view_mm": 3.0,
        "vessel_length_mm": 71.05, "segments": 103, "length_mm": 91.4, "percent_diameter_stenosis": 9.1}


def test_one_csv_writer_for_batch_rows_and_tables(tmp_path):
    """``folder_batch.write_rows`` writes a batch's CSV (its columns first) and a table such as OCTADepth's depth
    bands (the rows' own columns only, which OCTADepth wrote with a DictWriter of its own)."""
    from VesselReconLib import folder_batch

    rows = [{"band": "0-25 %", "segments": 3}, {"band": "all", "segments": 5, "note": "x"}]
    table = folder_batch.write_rows(rows, tmp_path / "bands.csv", first=())
    assert table.read_bytes() == b"band,segments,note\r\n0-25 %,3,\r\nall,5,x\r\n"
    batch = folder_batch.write_rows([{"input": "a.nrrd", "dice": 0.5}], tmp_path / "batch.csv")
    assert batch.read_text(encoding="utf-8").splitlines() == ["input,status,output,error,dice", "a.nrrd,,,,0.5"]


def test_slicer_util_helpers_work_headless(scene):
    import slicer
    import slicer.util

    node = mrml.array_to_volume(np.ones((2, 3, 4), np.float32) * 7, np.eye(4), "util", scene=scene)
    assert slicer.mrmlScene is scene
    assert slicer.util.getNode("util") is node
    assert slicer.util.arrayFromVolume(node).shape == (2, 3, 4)
    assert slicer.app.applicationLogic() is not None


def test_a_rolled_back_volume_keeps_its_display_pipeline_on_its_live_image_data(scene):
    """Rolling back an overwritten volume restored its display node's old pipeline input, whose producer the
    overwrite had deleted (an intermittent segfault in VTK); the display now follows the volume's live data."""
    volume = mrml.array_to_volume(np.zeros((1, 8, 8), np.float32), np.eye(4), "kept", scene=scene)
    with pytest.raises(RuntimeError), mrml.transaction(scene):
        mrml.array_to_volume(np.ones((1, 8, 8), np.float32), np.eye(4), "kept", node=volume, scene=scene)
        raise RuntimeError("disk full (simulated)")
    display = volume.GetDisplayNode()
    assert display.GetInputImageDataConnection() is volume.GetImageDataConnection()
    assert float(mrml.volume_to_array(volume)[0].sum()) == 0.0


def test_writing_puts_what_it_wrote_under_the_inputs_transform(scene, under_registration):
    """One mechanism for every Logic: the nodes a ``writing(follow=volume)`` block adds or overwrites go under the
    input's parent transform once committed (each Logic called ``follow_transform`` on its own list); a node the
    block did not write stays as it was, a table is passed over, and a failed block moves nothing."""
    from VesselReconLib.logic_base import VesselReconLogic

    logic = VesselReconLogic(scene)
    volume = mrml.array_to_volume(np.ones((2, 8, 8), np.float32), np.eye(4), "scan", scene=scene)
    reused = mrml.array_to_volume(np.zeros((2, 8, 8), np.float32), np.eye(4), "out", scene=scene)
    other = mrml.array_to_volume(np.zeros((2, 8, 8), np.float32), np.eye(4), "other", scene=scene)
    moved = under_registration(volume)
    with pytest.raises(RuntimeError), logic.writing(follow=volume):
        added = mrml.array_to_volume(np.ones((2, 8, 8), np.float32), np.eye(4), "added", scene=scene)
        raise RuntimeError("disk full (simulated)")
    assert reused.GetTransformNodeID() is None and scene.GetFirstNodeByName("added") is None
    with logic.writing(follow=volume):
        added = mrml.array_to_volume(np.ones((2, 8, 8), np.float32), np.eye(4), "added", scene=scene)
        mrml.array_to_volume(np.ones((2, 8, 8), np.float32), np.eye(4), "out", scene=scene)
        mrml.rows_to_table([{"metric": "a", "value": 1.0}], "table", scene=scene)   # not transformable: left alone
    assert [n.GetTransformNodeID() for n in (added, reused, other)] == [moved.GetID(), moved.GetID(), None]


def test_label_values_accept_label_maps_and_refuse_a_scan_chosen_as_mask():
    """A binary mask, a 150-label parcellation and a label map stored as float pass; a scan (fractional or
    thousands of integer grey values, as a CT in HU) is refused."""
    from VesselReconLib.errors import InputError

    rng = np.random.default_rng(0)
    mrml.check_label_values(rng.random((8, 20, 20)) > 0.5, "mask")
    mrml.check_label_values(rng.integers(0, 150, (8, 20, 20)).astype(np.int16), "parcellation")
    mrml.check_label_values(rng.integers(0, 3, (8, 20, 20)).astype(np.float32), "float labels")
    for scan in (rng.random((8, 20, 20)).astype(np.float32), rng.integers(-1000, 1500, (8, 20, 20)).astype(np.int16)):
        with pytest.raises(InputError, match="not a label map"):
            mrml.check_label_values(scan, "mask")


def test_a_private_scene_saves_what_the_main_scene_saves(tmp_path):
    """A headless batch saves each case from its private scene: a curve's radii (a markups measurement whose
    classes the Markups logic registers on the main scene only) must survive the .mrb round trip."""
    from VesselReconLib import runtime

    scene = runtime.private_scene()
    mrml.polyline_to_curve(np.array([[0, 0, 0], [1, 2, 3], [4, 5, 6.0]]), "c", radii=np.array([1.0, 1.5, 2.0]),
                           scene=scene)
    loaded = mrml.load_scene(mrml.save_scene(tmp_path / "s.mrb", scene), runtime.private_scene())
    np.testing.assert_allclose(mrml.curve_radii(loaded.GetFirstNodeByName("c")), [1.0, 1.5, 2.0])


def _sphere(radius: float):
    source = vtkSphereSource()
    source.SetRadius(radius)
    source.Update()
    return source.GetOutput()


def test_rollback_restores_a_model_without_overwriting_the_callers_polydata(scene):
    """A failed re-run's polydata belongs to its caller: the rollback gives the model its saved mesh back
    without deep-copying the old mesh into that object (an in-place copy into a cached, shared result
    crashed VTK intermittently)."""
    old, new = _sphere(1.0), _sphere(5.0)
    old_bounds, new_bounds = old.GetBounds(), new.GetBounds()
    node = mrml.polydata_to_model(old, "rollback model", scene=scene)
    with pytest.raises(RuntimeError):
        with mrml.transaction(scene):
            assert mrml.polydata_to_model(new, "rollback model", scene=scene) is node
            raise RuntimeError("disk full (simulated)")
    assert node.GetPolyData().GetBounds() == pytest.approx(old_bounds)
    assert new.GetBounds() == pytest.approx(new_bounds)
    assert node.GetPolyData() is not new
