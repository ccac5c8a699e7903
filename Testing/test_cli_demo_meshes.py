"""CLI entry points, the demo's scene and renders, mesh utilities and the training loop."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from VesselReconLib import meshes, mrml, render, training
from VesselReconLib.demo import DemoContext, adapter_showcase


def test_version_command():
    out = subprocess.run([sys.executable, "-m", "VesselReconLib.cli", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip().startswith("vesselrecon 0.")


def test_building_the_command_line_imports_no_monai_or_torch():
    """`vesselrecon --version` / `--help` build every method's parser; none may pull in MONAI or torch
    (VC-Net's eval and bench arguments and angio3d.cli's `..device` import used to: a 9 s start)."""
    code = ("import sys; from VesselReconLib.cli import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('monai', 'torchvision', 'torch')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout[:300]


def test_adapter_showcase_writes_nodes_and_a_png(scene, tmp_path):
    from PIL import Image

    context = DemoContext(scene=scene, out=tmp_path)
    adapter_showcase(context)
    png = Image.open(context.renders[0])
    assert png.size == (800, 600)
    pixels = np.asarray(png.convert("RGB")).reshape(-1, 3)
    assert (pixels.min(axis=1) < 200).mean() > 0.01  # the tube covers part of the white background
    path = mrml.save_scene(tmp_path / "demo.mrb", scene)
    mrml.load_scene(path, scene)
    assert scene.GetFirstNodeByName("Demo tube").GetPolyData().GetNumberOfPoints() > 100
    assert scene.GetFirstNodeByName("Demo test volume").GetImageData().GetDimensions() == (48, 48, 32)


def test_tube_is_watertight_with_expected_volume():
    points = np.c_[np.zeros(50), np.zeros(50), np.linspace(0, 20, 50)]
    surface = meshes.tube(points, 2.0, sides=64)
    assert meshes.is_watertight(surface)
    area, volume = meshes.surface_area_and_volume(surface)
    assert volume == pytest.approx(np.pi * 4 * 20, rel=0.01)
    assert area == pytest.approx(2 * np.pi * 2 * 20 + 2 * np.pi * 4, rel=0.01)


def test_one_tube_sweep_over_several_polylines():
    """``offsets`` split the points into polylines swept at once (OCTADepth's network); each tube is closed."""
    z = np.linspace(0, 10, 20)
    points = np.r_[np.c_[np.zeros(20), np.zeros(20), z], np.c_[np.full(20, 10.0), np.zeros(20), z]]
    both = meshes.tube(points, 1.0, sides=8, offsets=[0, 20, 40])
    assert len(meshes.component_sizes(both)) == 2 and meshes.is_watertight(both)
    assert both.GetNumberOfPoints() == meshes.tube(points[:20], 1.0, sides=8).GetNumberOfPoints() * 2 == 2 * 20 * 8


def test_isosurface_of_a_sphere_sdf_is_placed_in_ras(tmp_path):
    matrix = mrml.ijk_to_ras_matrix((0.5, 0.5, 1.0), (10.0, 20.0, 30.0))
    k, j, i = np.mgrid[0:32, 0:64, 0:64]
    centre = np.array([10 + 16.0, 20 + 16.0, 30 + 16.0])
    sdf = np.sqrt((10 + 0.5 * i - centre[0]) ** 2 + (20 + 0.5 * j - centre[1]) ** 2
                  + (30 + 1.0 * k - centre[2]) ** 2) - 8.0
    surface = meshes.isosurface(sdf, matrix)
    radii = np.linalg.norm(meshes.points_of(surface) - centre, axis=1)
    np.testing.assert_allclose(radii, 8.0, atol=0.05)
    assert meshes.is_watertight(surface)
    assert len(meshes.component_sizes(surface)) == 1
    saved = meshes.save_polydata(surface, tmp_path / "sphere.vtp")
    assert meshes.load_polydata(saved).GetNumberOfPoints() == surface.GetNumberOfPoints()


def test_remove_small_components_drops_fragments():
    big = meshes.tube(np.c_[np.zeros(20), np.zeros(20), np.linspace(0, 10, 20)], 2.0)
    small = meshes.tube(np.array([[30.0, 0, 0], [30.5, 0, 0]]), 0.2, sides=6)
    both = meshes.append([big, small])
    assert len(meshes.component_sizes(both)) == 2
    cleaned = meshes.remove_small_components(both, min_points=50)
    assert len(meshes.component_sizes(cleaned)) == 1
    assert cleaned.GetNumberOfPoints() == big.GetNumberOfPoints()


def test_save_image_png_with_colour_ramp(tmp_path):
    from PIL import Image

    path = render.save_image_png(np.linspace(0, 1, 100).reshape(10, 10), tmp_path / "ramp.png",
                                 colormap=[(1, 0, 0), (0, 0, 1)])
    rgb = np.asarray(Image.open(path))
    assert tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[-1, -1]) == (0, 0, 255)


def test_trainer_learns_checkpoints_and_resumes(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    model = torch.nn.Linear(3, 1)

    def make_trainer(m):
        optimizer = torch.optim.Adam(m.parameters(), lr=0.05)
        return training.Trainer(model=m, optimizer=optimizer, out_dir=tmp_path,
                                loss_fn=lambda net, batch: torch.nn.functional.mse_loss(net(batch[0]), batch[1]),
                                monitor="val_mse")

    def validate(net):
        return {"mse": float(torch.nn.functional.mse_loss(net(x), y))}

    trainer = make_trainer(model)
    trainer.fit(lambda epoch: [(x, y)] * 10, epochs=3, validate=validate, batches_per_epoch=10)
    first = trainer.history[-1]["val_mse"]
    assert trainer.history[0]["val_mse"] > first
    resumed = make_trainer(torch.nn.Linear(3, 1))
    assert resumed.resume()
    assert resumed.epoch == 3 and torch.allclose(resumed.model.weight, model.weight)
    resumed.fit(lambda epoch: [(x, y)] * 10, epochs=6, validate=validate)
    assert len(resumed.history) == 6 and resumed.history[-1]["val_mse"] < first


def test_phantom_gallery_command_writes_pictures(tmp_path):
    from PIL import Image

    from VesselReconLib import cli
    from VesselReconLib.phantoms import gallery

    assert cli.main(["phantoms", "octa", "--count", "2", "--seed", "3", "--out", str(tmp_path / "octa")]) == 0
    assert len(list((tmp_path / "octa" / "images").glob("*.png"))) == 2
    path = gallery.write_gallery(tmp_path, kinds=["xray"])[0]
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape[0] == 256 and picture.shape[1] > 5 * 256
    red = (picture[..., 0] > 200) & (picture[..., 1] < 120)
    assert red.sum() > 200  # the SOI overlay and the red mesh are drawn


def test_msd_dataset_json_paths_are_relative_to_the_dataset(tmp_path, monkeypatch):
    import json

    from VesselReconLib.phantoms.datasets import write_msd_dataset_json

    monkeypatch.chdir(tmp_path)
    out = write_msd_dataset_json("data/ct", "ct", "CT", ["background", "vessel"],
                                 [("data/ct/imagesTr/a.nii.gz", "data/ct/labelsTr/a.nii.gz"),
                                  ("imagesTr/b.nii.gz", "labelsTr/b.nii.gz")])
    training = json.loads(out.read_text())["training"]
    assert training == [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"},
                        {"image": "./imagesTr/b.nii.gz", "label": "./labelsTr/b.nii.gz"}]
