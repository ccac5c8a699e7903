"""VesselSDF: occupancy + signed-distance-field priors for vessel reconstruction from thick-slice CT.

Method: "VesselSDF: Distance Field Priors for Vascular Network Reconstruction" (MICCAI 2025).
Stage 1 predicts voxelwise occupancy (attention U-Net), stage 2 refines the detached occupancy
probabilities into a signed distance field in mm (negative inside), trained with SDF, occupancy,
eikonal, Gaussian-smoothness and surface regularisers; the SDF is interpolated through the slice
gaps and its zero level is meshed.
"""
