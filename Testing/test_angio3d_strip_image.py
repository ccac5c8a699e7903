"""Angio3D's 2D strip-image QCA reader (round 13 study, not wired into the pipeline): its residual form and
that it learns the lumen from the strip IMAGE when the strip readings carry no lesion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_angio3d_quality import synthetic_lesion


def lesion_case(percent: float, seed: int) -> tuple[dict, list[np.ndarray]]:
    """Two identical views of a synthetic lesion whose strip readings (and the regressor's radii) are the
    healthy radius everywhere: the narrowing is only in the profiles across the vessel."""
    from VesselReconLib.angio3d.centerline import vessel_profiles
    from VesselReconLib.angio3d.lumen import REACH_PX

    image, points, truth = synthetic_lesion(percent, noise=0.5, seed=seed)
    n = len(points)
    flat = np.full(n, 6.0)
    view = {"pixels": points, "points": np.c_[points[:, 0] * 0.2, np.zeros((n, 2))], "a_index": np.arange(n, dtype=float),
            "mm_per_px": np.full(n, 0.2), "floored": np.zeros(n, bool), "profiles": vessel_profiles(image, points, REACH_PX)[1],
            "off_px": np.zeros(n), "radii": flat * 0.2, "true_radii_px": truth}
    return {"seed": seed, "truth": percent, "views": [view, dict(view)]}, [flat, flat]


def test_strip_image_reader_corrects_the_strip_reading_from_the_image():
    from VesselReconLib.angio3d.fusion import fused_qca, training_tensors
    from VesselReconLib.angio3d.strip_image import StripImageFusion, fit_member

    case, reads = lesion_case(70.0, seed=5)
    untrained = StripImageFusion(channels=(4, 4), width=8)
    torch.nn.init.zeros_(untrained.members[0].head.weight)
    torch.nn.init.zeros_(untrained.members[0].head.bias)
    assert np.allclose(untrained.radii(case["views"], reads)[0], 6.0 * 0.2, rtol=1e-5)   # residual: the strip reading
    before = fused_qca(case["views"], untrained.radii(case["views"], reads))["percent_diameter_stenosis"]
    assert before == pytest.approx(0.0, abs=1e-6)                                            # the readings show no lesion

    train = [lesion_case(percent, seed) for percent in (40.0, 60.0, 80.0) for seed in (0, 1)]
    x, y, w = training_tensors([c for c, _ in train], [r for _, r in train])
    model = fit_member(x, y, w, seed=0, qca_weight=1.0, epochs=40, batch=4, log=lambda *_: None, channels=(4, 4), width=8)
    radii = model.radii(case["views"], reads)
    truth = case["views"][0]["true_radii_px"] * 0.2
    assert radii[0].min() < 0.6 * 6.0 * 0.2                            # the throat is read from the image
    assert np.median(np.abs(np.log(radii[0] / truth))) < 0.15
    assert abs(fused_qca(case["views"], radii)["percent_diameter_stenosis"] - 70.0) < 10


def test_strip_image_training_reads_the_qca_term_through_the_median_it_is_given(monkeypatch):
    """Round 13 (comb13): ``fit_member``/``fit_ensemble`` pass ``qca_median`` to the QCA term (``None``: the rule's),
    and the median changes the training (the QCA term differs through 1 and 3 samples)."""
    from VesselReconLib.angio3d import fusion, strip_image
    from VesselReconLib.angio3d.fusion import training_tensors

    seen = []

    def recording(qca_weight, median=None):
        seen.append(median)
        return fusion.qca_criterion(qca_weight, median)

    monkeypatch.setattr(strip_image, "qca_criterion", recording)
    train = [lesion_case(percent, 0) for percent in (60.0, 80.0)]
    x, y, w = training_tensors([c for c, _ in train], [r for _, r in train])
    small = dict(epochs=2, log=lambda *_: None, channels=(4, 4), width=8)
    models = {m: strip_image.fit_member(x, y, w, seed=0, qca_weight=1.0, qca_median=m, batch=2, **small) for m in (1, 3)}
    strip_image.fit_ensemble(x, y, w, ((0, 1.0), (1, 1.0)), **small)
    assert seen == [1, 3, None, None]
    head = {m: models[m].members[0].head.weight for m in (1, 3)}
    assert not torch.allclose(head[1], head[3])
