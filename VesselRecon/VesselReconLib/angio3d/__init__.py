"""3DAngioNet (Bransby et al., "3D Coronary Vessel Reconstruction from Bi-Plane Angiography using Graph
Convolutional Networks", ISBI 2023, arXiv:2302.14795): coronary lumen mesh from two X-ray views.

Pipeline: C-arm geometry -> SOI segmentation (U-Net) -> 2D centrelines -> triangulation ->
6,000-vertex template mesh -> surface refinement (VGG features + GCN) -> bifurcation stitching.
Coordinates inside this package are DICOM patient coordinates (LPS, mm, isocentre at the origin);
the Logic converts them to RAS for Slicer.
"""
