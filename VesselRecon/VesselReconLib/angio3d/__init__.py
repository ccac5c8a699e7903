"""3DAngioNet: 3D coronary lumen mesh reconstruction from two-view X-ray angiography (ISBI 2023).

Pipeline: C-arm geometry -> SOI segmentation (U-Net) -> 2D centrelines -> triangulation ->
6,000-vertex template mesh -> surface refinement (VGG features + GCN) -> bifurcation stitching.
Coordinates inside this package are DICOM patient coordinates (LPS, mm, isocentre at the origin);
the Logic converts them to RAS for Slicer.
"""
