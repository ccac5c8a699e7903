"""Default call (no mask, boundary refined), masked call and the unrefined default call on held-out MSD sets:
``python VesselRecon/VCNet/scripts/default_vs_masked.py <folder>...`` (1 thread, shipped ``lite``)."""
import json, sys, numpy as np, torch, logging
torch.set_num_threads(1); logging.disable(logging.WARNING)
from VesselReconLib import metrics, registry
from VesselReconLib.vcnet.inference import segment
from VesselReconLib.vcnet.data import load_cases
net, _ = registry.load_model("vcnet", "lite", "cpu")
for folder in sys.argv[1:]:
    cases = load_cases(folder, keep_raw=True)
    rows = {}
    for c in cases:
        for name, mask, refine in (("default", None, True), ("masked", c.mask, True), ("default_norefine", None, False)):
            r = segment(c.raw, c.spacing, net, mask, device="cpu", refine=refine)
            rows.setdefault(name, []).append(metrics.segmentation_report(r.labels, c.label))
    print(json.dumps({"set": folder, **{k: {m: round(float(np.mean([r[m] for r in v])), 4) for m in ("dice", "precision", "recall")} for k, v in rows.items()}}), flush=True)
