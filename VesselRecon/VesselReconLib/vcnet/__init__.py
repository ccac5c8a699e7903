"""VC-Net: 3D MRA / SWI vessel segmentation fusing a 3D U-Net with a 2D U-Net on composited sliding MIPs.

Pipeline: :mod:`.mip` (sliding MIPs) -> :mod:`.network` (3D and 2D branches, fusion) -> :mod:`.inference`
(sliding windows, volume in and volume out); :mod:`.logic` drives Slicer nodes, :mod:`.cli` the
``vesselrecon vcnet`` commands, :mod:`.train` / :mod:`.eval` / :mod:`.bench` the rest.
"""
