"""Shared pytest fixtures: a headless MRML scene, CPU thread caps and GPU skipping."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    except ImportError:
        pass


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def scene():
    """A cleared headless MRML scene (the same real vtkMRMLScene Slicer uses)."""
    from VesselReconLib import runtime

    return runtime.new_scene()


@pytest.fixture
def under_registration(scene):
    """``under_registration(node)`` puts ``node`` under a new linear transform of ``scene`` (a registration moving
    it 50 mm along R) and returns that transform node."""
    def place(node):
        from VesselReconLib import mrml

        moved = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
        moved.SetMatrixTransformToParent(mrml.vtk_matrix(mrml.ijk_to_ras_matrix((1, 1, 1), (50.0, 0.0, 0.0))))
        node.SetAndObserveTransformNodeID(moved.GetID())
        return moved

    return place


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """Tests that set torch's intra-op thread count get it put back afterwards, pass or fail."""
    torch = sys.modules.get("torch")  # imported by pytest_configure where installed
    before = torch.get_num_threads() if torch else None
    yield
    if torch:
        torch.set_num_threads(before)
