"""Angio3D on the real static coronary phantom (../shared): the reference registered to the two real views
by one rigid transform, then the branches seen in both views reconstructed and compared in 3D.
Skips cleanly without the shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
pytestmark = pytest.mark.skipif(not (SHARED / "datasets" / "xa_static_phantom").is_dir()
                                or not (SHARED / "samples" / "xa-phantom" / "IM3.dcm").is_file(),
                                reason="needs ../shared/datasets/xa_static_phantom and ../shared/samples/xa-phantom")


@pytest.fixture(scope="module")
def report():
    import torch

    from VesselReconLib import registry
    from VesselReconLib.angio3d.real_phantom import evaluate_real_phantom

    net = registry.load_model("angio3d", "angio3d-lite", "cpu")[0]
    with torch.no_grad():
        return evaluate_real_phantom(SHARED, [("3DAngioNet", net, "net", True)])


def test_reference_registers_onto_both_real_views(report):
    # one rigid transform puts the reference centrelines on the vessels of both views
    assert report["registration_residual_visible_px"] < 2.0
    assert len(report["branches"]) >= 4


def test_real_phantom_centrelines_and_radii(report):
    row = report["rows"][0]
    # measured floors on the shared phantom (see the module README for the numbers and the targets)
    assert row["mean_mm"] < MEAN_FLOOR_MM
    assert row["worst_max_mm"] < MAX_FLOOR_MM
    assert 0.55 < row["radius_ratio"] < 1.4


def test_branches_that_miss_the_target_are_flagged_by_their_depth_uncertainty(report):
    # the honest per-branch uncertainty: a branch whose centreline is off by more than 2.5 mm somewhere
    # is one the view pair does not pin (poorly measured depth along a fifth of it or more) and warns
    for row in report["per_branch"][0]["rows"]:
        if row["max_mm"] > 2.5:
            assert row["uncertainty_mm"]["poorly_measured_fraction"] > 0.2, row
        if row["uncertainty_mm"]["poorly_measured_fraction"] == 0:
            assert row["max_mm"] < 2.5, row


@pytest.mark.xfail(strict=True, reason="issue 14 target (mean <= 0.8 mm, max <= 2.5 mm per branch) met on 4 of 7 "
                   "branches; measured mean / max mm (round 12's converged reference registration, the same under "
                   "every OpenBLAS kernel): 0: 2.47 / 3.96, 1: 3.02 / 5.07, 4: 1.33 / 4.37 (3, 5, 6, 8 meet it): "
                   "branches 0, 1 and 4 are poorly measured by this view pair (depth along the epipolar lines); even "
                   "2D centrelines on the imaged vessels' centres miss branch 1 (round-13 floors, "
                   "test_angio3d_floors.py); see the README")
def test_real_phantom_meets_the_issue_target(report):
    rows = report["per_branch"][0]["rows"]
    assert all(r["mean_mm"] <= 0.8 and r["max_mm"] <= 2.5 for r in rows)


# Measured (shipped lite, joint path choice; round 12's converged registration): mean 1.30 mm, worst max 5.07 mm,
# radius ratio 0.65 over 7 branches (round 3's registration: 1.43 / 5.6; before the joint path choice: 1.84 / 8.4 on
# the same 7; round 2: 1.93 / 8.4 on 6). The issue's targets (mean <= 0.8 mm, max <= 2.5 mm) are met on four
# branches of seven; these floors only catch regressions.
MEAN_FLOOR_MM = 1.8
MAX_FLOOR_MM = 7.0
