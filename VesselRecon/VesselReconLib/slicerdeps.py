"""Install VesselRecon's Python dependencies inside 3D Slicer without replacing Slicer's own packages.

PyTorch comes from the PyTorch extension (``PyTorchUtils``), which picks the build matching the
GPU driver. The other packages are installed with ``slicer.packaging.pip_ensure`` and
``skip_packages``, so that Slicer's numpy, vtk and SimpleITK (and the installed torch) are never
replaced by wheels that dependencies such as pyvista or monai would otherwise pull in. Older
Slicer versions fall back to ``slicer.util.pip_install`` with the same protection. ``slicer`` is
imported only inside functions; failures are shown as short messages, never as tracebacks.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging

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
    "pyvista": "pyvista",
    "pytorch_msssim": "pytorch-msssim",
    "manifold3d": "manifold3d",
    "pydicom": "pydicom",
    "yaml": "pyyaml",
}
# Provided by Slicer (or by the PyTorch extension): never installed or upgraded from here.
SLICER_PACKAGES = ("numpy", "vtk", "SimpleITK", "torch", "torchvision")
# Fallback without skip_packages: these pull vtk/torch/numpy wheels, so install them with --no-deps
# and add their remaining dependencies explicitly.
NO_DEPS = {
    "pyvista": ["pooch", "scooby", "matplotlib", "pillow", "typing-extensions"],
    "monai": [],
    "timm": ["huggingface-hub", "pyyaml", "safetensors"],
    "segmentation-models-pytorch": ["huggingface-hub", "pillow", "tqdm"],
    "pytorch-msssim": [],
}
PYTORCH_HELP = ("VesselRecon needs PyTorch. Install the \"PyTorch\" extension from the Extension Manager, "
                "restart Slicer, then open this module again.")


def missing_modules(names=None) -> list[str]:
    """Import names (``torch`` and those of :data:`REQUIREMENTS`) that cannot be found."""
    names = list(names) if names is not None else ["torch", *REQUIREMENTS]
    importlib.invalidate_caches()
    return [name for name in names if importlib.util.find_spec(name) is None]


def ensure_dependencies(parent_widget=None, ask: bool = True) -> bool:
    """Make sure torch and the other packages can be imported, offering to install what is missing.

    :param parent_widget: parent of the message boxes.
    :param ask: ask before installing (``False`` installs straight away).
    :returns: True when everything is importable afterwards.
    """
    missing = missing_modules()
    if not missing:
        return True
    import slicer

    if slicer.app.testingEnabled():
        log.warning("Testing mode: not installing missing packages %s", ", ".join(missing))
        return False
    if "torch" in missing and not _install_torch(parent_widget, ask):
        return False
    others = [REQUIREMENTS[name] for name in missing if name in REQUIREMENTS]
    if others and not _install_packages(others, parent_widget, ask):
        return False
    still = missing_modules()
    if still:
        _show(f"These Python packages are still missing: {', '.join(still)}. Restart Slicer and try again, "
              "or install them from the Python console with slicer.packaging.pip_install.", parent_widget)
    return not still


def _install_torch(parent_widget, ask: bool) -> bool:
    """Install torch through the PyTorch extension (which picks the CUDA/CPU build)."""
    try:
        import PyTorchUtils
    except ImportError:
        _show(PYTORCH_HELP, parent_widget)
        return False
    try:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=ask,
                                                              torchVersionRequirement=TORCH_REQUIREMENT)
    except Exception as exc:
        log.exception("PyTorch installation failed")
        _show(f"Installing PyTorch failed: {exc}. Open the \"PyTorch Utils\" module to install it, restart "
              "Slicer, then open this module again.", parent_widget)
        return False
    if torch is None:
        _show("PyTorch was not installed, so VesselRecon cannot run. " + PYTORCH_HELP, parent_widget)
        return False
    return True


def _install_packages(requirements: list[str], parent_widget, ask: bool) -> bool:
    """Install ``requirements`` without touching :data:`SLICER_PACKAGES`; False (after a message) on failure."""
    try:
        if _pip_ensure() is not None:
            _install_with_pip_ensure(requirements, ask)
        else:
            _install_with_pip_install(requirements, ask)
    except Exception as exc:
        if _declined(exc):
            _show("VesselRecon cannot run without these packages: " + ", ".join(requirements)
                  + ". Click Apply again to be asked again.", parent_widget)
            return False
        log.exception("Installing %s failed", requirements)
        _show(f"Installing {', '.join(requirements)} failed ({exc}). Check the internet connection and "
              "the application log, then try again.", parent_widget)
        return False
    importlib.invalidate_caches()
    return True


def _pip_ensure():
    """``slicer.packaging.pip_ensure`` where this Slicer has it, else None."""
    try:
        from slicer import packaging
    except ImportError:
        return None
    return getattr(packaging, "pip_ensure", None)


def _install_with_pip_ensure(requirements: list[str], ask: bool) -> None:
    from packaging.requirements import Requirement

    pip_ensure = _pip_ensure()
    options = {"skip_packages": list(SLICER_PACKAGES), "prompt_install": ask, "requester": "VesselRecon"}
    parameters = inspect.signature(pip_ensure).parameters
    pip_ensure([Requirement(r) for r in requirements], **{k: v for k, v in options.items() if k in parameters})


def _install_with_pip_install(requirements: list[str], ask: bool) -> None:
    """Older Slicer: plain pip installs, with --no-deps for packages that would pull Slicer's packages."""
    import slicer

    if ask and not slicer.util.confirmOkCancelDisplay(
            "VesselRecon needs these Python packages: " + ", ".join(requirements) + ". Install them now?"):
        raise InstallDeclined()
    no_deps = [r for r in requirements if _name(r) in NO_DEPS]
    plain = [r for r in requirements if _name(r) not in NO_DEPS]
    plain += sorted({d for r in no_deps for d in NO_DEPS[_name(r)]} - set(plain))
    if plain:
        slicer.util.pip_install(plain)
    if no_deps:
        slicer.util.pip_install(["--no-deps", *no_deps])


def _name(requirement: str) -> str:
    for sep in "<>=!~[; ":
        requirement = requirement.split(sep)[0]
    return requirement.lower()


class InstallDeclined(Exception):
    """The user chose not to install."""


def _declined(exc: BaseException) -> bool:
    return isinstance(exc, InstallDeclined) or type(exc).__name__ == "InstallationAbortedError" or (
        isinstance(exc, RuntimeError) and "declined" in str(exc).lower())


def _show(message: str, parent_widget=None) -> None:
    from .slicer_widget import show_error

    show_error(message, parent_widget)
