"""Install VesselRecon's Python dependencies inside 3D Slicer without replacing Slicer's own packages.

Called where the packages are needed (Apply, Load sample, Evaluate, Run batch), never when a module
is merely opened, as ``slicer.packaging.pip_ensure``'s documentation asks.

- **torch** comes from the PyTorch extension (``PyTorchUtils``), which picks the build matching the
  GPU driver. An installed torch is version-checked (:data:`TORCH_REQUIREMENT`), as
  SlicerTotalSegmentator does; a too old one is offered an upgrade through PyTorchUtils.
- **The other packages** go through :func:`slicer_compat.install_packages`: ``pip_ensure`` with
  ``skip_packages`` where Slicer has it, else pip in a child process with a progress dialog. Slicer's
  numpy, vtk and SimpleITK (and the installed torch) are never replaced.

pyvista is not installed inside Slicer (VesselRecon does not need it there; it is the optional
``notebook`` extra of the Python package). Failures are shown as short messages, never as tracebacks.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import subprocess

from . import slicer_compat

log = logging.getLogger(__name__)

TORCH_REQUIREMENT = ">=2.1"
# import name -> pip requirement
REQUIREMENTS = {
    "monai": "monai>=1.3",
    "timm": "timm",
    "segmentation_models_pytorch": "segmentation-models-pytorch",
    "safetensors": "safetensors",
    "skimage": "scikit-image",
    "scipy": "scipy",
    "pytorch_msssim": "pytorch-msssim",
    "manifold3d": "manifold3d",
    "pydicom": "pydicom",
    "yaml": "pyyaml",
}
# Provided by Slicer (or by the PyTorch extension): never installed or upgraded from here.
SLICER_PACKAGES = ("numpy", "vtk", "SimpleITK", "torch", "torchvision")
# Fallback without skip_packages: these pull torch/numpy wheels, so install them with --no-deps and
# add their remaining dependencies explicitly.
NO_DEPS = {
    "monai": [],
    "timm": ["huggingface-hub", "pyyaml", "safetensors"],
    "segmentation-models-pytorch": ["huggingface-hub", "pillow", "tqdm"],
    "pytorch-msssim": [],
}
PYTORCH_HELP = ("VesselRecon needs PyTorch. Install the \"PyTorch\" extension from the Extension Manager, "
                "restart Slicer, then try again.")


def missing_modules(names=None) -> list[str]:
    """Import names (``torch`` and those of :data:`REQUIREMENTS`) that cannot be found."""
    names = list(names) if names is not None else ["torch", *REQUIREMENTS]
    importlib.invalidate_caches()
    return [name for name in names if importlib.util.find_spec(name) is None]


def ensure_dependencies(parent_widget=None, ask: bool = True) -> bool:
    """Make sure torch (recent enough) and the other packages can be imported, offering to install them.

    :param parent_widget: parent of the message boxes.
    :param ask: ask before installing (``False`` installs straight away).
    :returns: True when everything is importable afterwards.
    """
    missing = missing_modules()
    torch_problem = slicer_compat.torch_problem(TORCH_REQUIREMENT) if "torch" not in missing else None
    if not missing and torch_problem is None:
        return True
    import slicer

    if slicer.app.testingEnabled():
        log.warning("Testing mode: not installing missing packages %s", ", ".join(missing) or "torch upgrade")
        return False
    if ("torch" in missing or torch_problem) and not _install_torch(parent_widget, ask, torch_problem):
        return False
    others = [REQUIREMENTS[name] for name in missing if name in REQUIREMENTS]
    if others and not _install_packages(others, parent_widget, ask):
        return False
    still = missing_modules()
    if still:
        _show(f"These Python packages are still missing: {', '.join(still)}. Restart Slicer and try again, "
              "or install them from the Python console with slicer.util.pip_install.", parent_widget)
    return not still


def _install_torch(parent_widget, ask: bool, problem: str | None = None) -> bool:
    """Install (or upgrade) torch through the PyTorch extension, which picks the CUDA/CPU build."""
    try:
        import PyTorchUtils
    except ImportError:
        _show((problem + " " if problem else "") + PYTORCH_HELP, parent_widget)
        return False
    try:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=ask,
                                                              torchVersionRequirement=TORCH_REQUIREMENT)
    except Exception as exc:
        log.exception("PyTorch installation failed")
        _show(f"Installing PyTorch failed: {exc}. Open the \"PyTorch Utils\" module and install torch"
              f"{TORCH_REQUIREMENT}, restart Slicer, then try again.", parent_widget)
        return False
    if torch is None:
        _show("PyTorch was not installed, so VesselRecon cannot run. " + PYTORCH_HELP, parent_widget)
        return False
    if problem:  # an old torch was already imported in this session: only a restart loads the new one
        _show(f"PyTorch was upgraded ({problem}). Restart Slicer to use the new version.", parent_widget)
        return False
    return True


def _install_packages(requirements: list[str], parent_widget, ask: bool, pip_ensure=None) -> bool:
    """Install ``requirements`` without touching :data:`SLICER_PACKAGES`; False (after a message) on failure."""
    try:
        slicer_compat.install_packages(requirements, SLICER_PACKAGES, ask, "VesselRecon", NO_DEPS, pip_ensure)
    except Exception as exc:
        if _declined(exc):
            _show("VesselRecon cannot run without these packages: " + ", ".join(requirements)
                  + ". Click Apply again to be asked again.", parent_widget)
            return False
        log.exception("Installing %s failed", requirements)
        detail = f" pip said: {exc.output.splitlines()[-1]}" if isinstance(exc, subprocess.CalledProcessError) \
            and exc.output else ""
        _show(f"Installing {', '.join(requirements)} failed ({exc}).{detail} Check the internet connection "
              "(behind a proxy, set HTTPS_PROXY before starting Slicer) and the application log, then try "
              "again.", parent_widget)
        return False
    importlib.invalidate_caches()
    return True


def _declined(exc: BaseException) -> bool:
    return isinstance(exc, slicer_compat.InstallDeclined) or type(exc).__name__ == "InstallationAbortedError" or (
        isinstance(exc, RuntimeError) and "declined" in str(exc).lower())


def _show(message: str, parent_widget=None) -> None:
    slicer_compat.show_error(message, parent_widget)
