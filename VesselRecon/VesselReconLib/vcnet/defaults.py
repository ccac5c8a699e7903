"""The default VC-Net model, named once: the Logic, ``vesselrecon vcnet``, ``eval vcnet`` and the Slicer
module all read it from here (a module with no imports, so ``--help`` and Slicer's module scan stay light).

The default TOF-MRA model (issue 15, round 5): ``vcnet-lite-fast``. ``lite`` (``vcnet-lite``) stays
shipped: it keeps the 0.3 mm gap within 0.03 (0.028 against 0.047). SWI / dark vessels: name the SWI
model (``vcnet-swi-lite``); the default is a TOF model.
"""

DEFAULT_MODEL = "lite-fast"  # the preset, which loads its own registry entry
DEFAULT_MODEL_NAME = f"vcnet-{DEFAULT_MODEL}"  # that entry's registry name
