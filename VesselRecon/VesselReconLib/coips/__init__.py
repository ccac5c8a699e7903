"""COIPS: OCTA image quality assessment, FAZ segmentation and quantification (OCTA-25K-IQA-SEG).

Pipeline: :mod:`.io` (format conversion) -> :mod:`.network` (quality classifier, FAZ U-Net) ->
:mod:`.faz` (FAZ metrics, classical baseline) -> :mod:`.reports`; :mod:`.batch` streams study
folders, :mod:`.logic` drives Slicer nodes, :mod:`.cli` the ``vesselrecon coips`` commands.
Submodules import torch lazily so that the post-processing workers stay light.
"""

GRADES = ("ungradable", "gradable", "outstanding")
