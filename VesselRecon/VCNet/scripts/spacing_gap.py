"""Decompose the 0.3 mm gap: input domain vs output resampling (4 held-out CoW crops, seeds 800024..7)."""
import json, sys, logging, numpy as np, torch
from scipy import ndimage
torch.set_num_threads(1); logging.disable(logging.WARNING)
from VesselReconLib import registry, metrics
from VesselReconLib.phantoms.mra import render_mra
from VesselReconLib.vcnet.inference import segment, predict_probability
from VesselReconLib.vcnet.data import normalize
net, _ = registry.load_model("vcnet", sys.argv[1] if len(sys.argv) > 1 else "lite", "cpu")
SF, SC = (0.3, 0.3, 0.3), (0.5, 0.5, 0.8)
def origin(p): return np.array(p.meta["origin_mm"][::-1], float)  # (z, y, x) mm of voxel 0
def sample(arr, o_src, s_src, o_dst, s_dst, shape, order=1):
    coords = [(o_dst[a] + np.arange(shape[a]) * s_dst[a] - o_src[a]) / s_src[a] for a in range(3)]
    grid = np.meshgrid(*coords, indexing="ij")
    return ndimage.map_coordinates(arr.astype(np.float32), grid, order=order, mode="nearest")
dice = metrics.dice
rows = []
for i in range(4):
    seed = 8 * 100_003 + i
    F = render_mra("mra", None, SF, seed, crop=(128, 267, 267), crop_centre="cow")
    C = render_mra("mra", None, SC, seed, crop=(48, 160, 160), crop_centre="cow")
    oF, oC, sF, sC = origin(F), origin(C), np.array(SF[::-1]), np.array(SC[::-1])
    r = {"seed": seed, "offset_mm": (oF - oC).round(2).tolist()}
    PC = segment(C.image, C.spacing, net).probability
    r["a_indist"] = dice(PC >= 0.5, C.label)
    r["b_indist_prob_to_fine"] = dice(sample(PC, oC, sC, oF, sF, F.label.shape) >= 0.5, F.label)
    r["c_coarse_label_to_fine"] = dice(sample(C.label, oC, sC, oF, sF, F.label.shape) >= 0.5, F.label)
    r["c2_fine_label_coarse_back"] = dice(sample(sample(F.label, oF, sF, oC, sC, C.label.shape), oC, sC, oF, sF, F.label.shape) >= 0.5, F.label)
    PF = segment(F.image, F.spacing, net).probability
    r["d_current"] = dice(PF >= 0.5, F.label)
    nF = normalize(F.image); nC = normalize(C.image)
    Fc = sample(nF, oF, sF, oC, sC, C.label.shape)
    PFc, _ = predict_probability(net, Fc, torch.device("cpu"))
    r["e_fine_input_on_coarse_grid_vs_coarse_label"] = dice(PFc >= 0.5, C.label)
    r["e2_that_prob_to_fine"] = dice(sample(PFc, oC, sC, oF, sF, F.label.shape) >= 0.5, F.label)
    lab = C.label > 0
    far = ~ndimage.binary_dilation(lab, iterations=3) & (C.brain_mask > 0)
    r["vessel_mean_C_vs_Fc"] = [round(float(nC[lab].mean()), 3), round(float(Fc[lab].mean()), 3)]
    r["tissue_sd_C_vs_Fc"] = [round(float(nC[far].std()), 3), round(float(Fc[far].std()), 3)]

    rows.append(r); print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
keys = [k for k in rows[0] if isinstance(rows[0][k], float)]
print(json.dumps({k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}))
