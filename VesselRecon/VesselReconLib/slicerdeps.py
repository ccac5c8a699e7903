"""Install VesselRecon's Python dependencies inside 3D Slicer without replacing Slicer's own packages.

Called where the packages are needed (Apply, Load sample, Evaluate, Run batch), never when a module
is merely opened, as ``slicer.packaging.pip_ensure``'s documentation asks.

- **torch and torchvision** come from the PyTorch extension (``PyTorchUtils``), which picks the build
  matching the GPU driver and installs torchvision with torch. Both installed versions are checked
  against :data:`TORCH_REQUIREMENTS`, as SlicerTotalSegmentator checks torch; a missing or too old one
  is offered an install or upgrade through PyTorchUtils.
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
import sys

from . import slicer_compat

log = logging.getLogger(__name__)

# The oldest torch/torchvision the installed stack supports: MONAI (1.6, the release the installer
# fetches) declares torch>=2.8, and torchvision 0.23 is the release built for torch 2.8. The pins of
# pyproject.toml (the tested versions) lie inside these ranges (test_slicer_compat checks both).
TORCH_REQUIREMENTS = {"torch": ">=2.8", "torchvision": ">=0.23"}
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
OFFLINE_HELP = ("Without internet access, install the packages from a folder of wheels (README of VesselRecon, "
                "Troubleshooting: \"Installs behind a proxy, or offline\").")
PYTORCH_HELP = ("VesselRecon needs PyTorch. Install the \"PyTorch\" extension from the Extension Manager, "
                "restart Slicer, then try again.")


def missing_modules(names=None) -> list[str]:
    """Import names (torch, torchvision and those of :data:`REQUIREMENTS`) that cannot be found."""
    names = list(names) if names is not None else [*TORCH_REQUIREMENTS, *REQUIREMENTS]
    importlib.invalidate_caches()
    return [name for name in names if importlib.util.find_spec(name) is None]


def ensure_dependencies(parent_widget=None, ask: bool = True) -> bool:
    """Make sure torch (recent enough) and the other packages can be imported, offering to install them.

    :param parent_widget: parent of the message boxes.
    :param ask: ask before installing (``False`` installs straight away).
    :returns: True when everything is importable afterwards.
    """
    missing = missing_modules()
    problem = torch_problem()
    if not missing and problem is None:
        return True
    import slicer

    if slicer.app.testingEnabled():
        log.warning("Testing mode: not installing missing packages %s", ", ".join(missing) or problem)
        return False
    if (problem or set(missing) & set(TORCH_REQUIREMENTS)) and not _install_torch(parent_widget, ask, problem):
        return False
    others = [REQUIREMENTS[name] for name in missing if name in REQUIREMENTS]
    if others and not _install_packages(others, parent_widget, ask):
        return False
    still = missing_modules()
    if still:
        _show(f"These Python packages are still missing: {', '.join(still)}. Restart Slicer and try again, "
              "or install them from the Python console with slicer.util.pip_install.", parent_widget)
    return not still


def torch_problem() -> str | None:
    """Why the installed torch or torchvision cannot be used (missing, too old), or None."""
    for distribution, requirement in TORCH_REQUIREMENTS.items():
        problem = slicer_compat.version_problem(distribution, requirement)
        if problem:
            return problem
    return None


def _install_torch(parent_widget, ask: bool, problem: str | None = None) -> bool:
    """Install (or upgrade) torch and torchvision through the PyTorch extension (CUDA/CPU build)."""
    try:
        import PyTorchUtils
    except ImportError:
        _show((problem + " " if problem else "") + PYTORCH_HELP, parent_widget)
        return False
    requirement = TORCH_REQUIREMENTS["torch"]
    try:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=ask,
                                                              torchVersionRequirement=requirement)
    except Exception as exc:
        log.exception("PyTorch installation failed")
        _show(f"Installing PyTorch failed: {exc}. Open the \"PyTorch Utils\" module and install torch"
              f"{requirement}, restart Slicer, then try again. {OFFLINE_HELP}", parent_widget)
        return False
    if torch is None:
        _show("PyTorch was not installed, so VesselRecon cannot run. " + PYTORCH_HELP, parent_widget)
        return False
    if _replaced_while_imported():  # the old version stays loaded until Slicer restarts
        _show(f"PyTorch was upgraded ({problem}). Restart Slicer to use the new version.", parent_widget)
        return False
    return True


def _replaced_while_imported() -> bool:
    """True when torch or torchvision was imported in this session and another version is installed now."""
    for name in TORCH_REQUIREMENTS:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__version__", None) != slicer_compat.installed_version(name):
            return True
    return False


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
              f"again. {OFFLINE_HELP}", parent_widget)
        return False
    importlib.invalidate_caches()
    return True


def _declined(exc: BaseException) -> bool:
    return isinstance(exc, slicer_compat.InstallDeclined) or type(exc).__name__ == "InstallationAbortedError" or (
        isinstance(exc, RuntimeError) and "declined" in str(exc).lower())


def _show(message: str, parent_widget=None) -> None:
    slicer_compat.show_error(message, parent_widget)
