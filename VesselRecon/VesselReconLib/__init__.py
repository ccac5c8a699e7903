"""VesselReconLib: the Qt-free core of the VesselRecon 3D Slicer extension.

Submodules are imported on demand so that ``import VesselReconLib`` stays light.
"""

__version__ = "0.1.0"

METHODS = ("octadepth", "angio3d", "coips", "vcnet", "vesselsdf", "octavessel")
DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")  # VesselReconLib.device resolves them (torch); named here without torch
