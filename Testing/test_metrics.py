"""Tests for VesselReconLib.metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from VesselReconLib import metrics as M

approx = pytest.approx


# ---------------------------------------------------------------------- segmentation
# pred = [1 1 1 0 0 0], ref = [0 1 1 1 0 0]
# TP = 2 (idx 1,2), FP = 1 (idx 0), FN = 1 (idx 3), TN = 2 (idx 4,5)
PRED = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
REF = np.array([0, 1, 1, 1, 0, 0], dtype=bool)


def test_segmentation_symmetric_example():
    assert M.dice(PRED, REF) == approx(2 * 2 / (3 + 3))        # 4/6
    assert M.iou(PRED, REF) == approx(2 / 4)                   # |P∩R|=2, |P∪R|=4
    assert M.jaccard(PRED, REF) == approx(0.5)
    assert M.jaccard_distance(PRED, REF) == approx(1 - 0.5)
    assert M.precision(PRED, REF) == approx(2 / 3)             # TP/(TP+FP)
    assert M.recall(PRED, REF) == approx(2 / 3)                # TP/(TP+FN)
    assert M.false_positive_rate(PRED, REF) == approx(1 / 3)   # FP/(FP+TN) = 1/(1+2)


def test_segmentation_asymmetric_example_nd():
    # pred = [[1 1 0] [0 0 0]], ref = [[1 0 0] [0 0 0]]: TP=1, FP=1, FN=0, TN=4
    pred = np.array([[1, 1, 0], [0, 0, 0]])
    ref = np.array([[1, 0, 0], [0, 0, 0]])
    rep = M.segmentation_report(pred, ref)
    assert rep["dice"] == approx(2 * 1 / (2 + 1))   # 2/3
    assert rep["iou"] == approx(1 / 2)
    assert rep["jaccard_distance"] == approx(1 / 2)
    assert rep["precision"] == approx(1 / 2)        # 1/(1+1)
    assert rep["recall"] == approx(1.0)             # 1/(1+0)
    assert rep["fpr"] == approx(1 / 5)              # 1/(1+4)
    # argument order matters for precision/recall/fpr: swap -> TP=1, FP=0, FN=1, TN=4
    assert M.precision(ref, pred) == approx(1.0)
    assert M.recall(ref, pred) == approx(0.5)
    assert M.false_positive_rate(ref, pred) == approx(0.0)


def test_segmentation_3d_nonbool_labels():
    # any non-zero value is foreground: 2x2x2 volume, pred has label 3 in 2 voxels, ref 7 in 1
    pred = np.zeros((2, 2, 2), dtype=np.uint8)
    ref = np.zeros((2, 2, 2), dtype=np.float32)
    pred[0, 0, 0] = pred[1, 1, 1] = 3
    ref[1, 1, 1] = 7.0
    # TP=1, FP=1, FN=0, TN=6
    assert M.dice(pred, ref) == approx(2 / 3)
    assert M.false_positive_rate(pred, ref) == approx(1 / 7)


def test_segmentation_empty_conventions():
    z = np.zeros(4, dtype=bool)
    one = np.array([0, 1, 0, 0], dtype=bool)
    full = np.ones(4, dtype=bool)
    both = M.segmentation_report(z, z)
    assert both == {"dice": 1.0, "iou": 1.0, "jaccard_distance": 0.0,
                    "precision": 1.0, "recall": 1.0, "fpr": 0.0}
    # empty prediction, non-empty reference: everything missed
    assert M.dice(z, one) == 0.0
    assert M.precision(z, one) == 0.0
    assert M.recall(z, one) == 0.0
    # non-empty prediction, empty reference
    assert M.iou(one, z) == 0.0
    assert M.recall(one, z) == 0.0
    assert M.precision(one, z) == 0.0
    assert M.false_positive_rate(one, z) == approx(1 / 4)
    # reference without background: FPR defined as 0
    assert M.false_positive_rate(one, full) == 0.0


def test_segmentation_errors():
    with pytest.raises(ValueError, match="shape mismatch"):
        M.dice(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        M.iou(np.array([1.0, np.nan]), np.array([1.0, 0.0]))


def test_torch_tensors_accepted():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    p = torch.tensor(PRED.astype(np.float32), requires_grad=True)
    r = torch.tensor(REF)
    assert M.dice(p, r) == approx(2 / 3)
    assert M.rmse(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0])) == approx(math.sqrt(2.0))


# ----------------------------------------------------------------------------- depth
# gt   = [1,   2, 4, 10]
# pred = [1.2, 3, 2, 10]
# ratio max(p/g, g/p) = [1.2, 1.5, 2.0, 1.0]
# delta1 (<1.25)     : 1.2, 1.0          -> 2/4
# delta2 (<1.5625)   : 1.2, 1.5, 1.0     -> 3/4
# delta3 (<1.953125) : 1.2, 1.5, 1.0     -> 3/4  (2.0 is still out)
# ARD = mean(0.2/1, 1/2, 2/4, 0/10) = (0.2+0.5+0.5+0)/4 = 0.3
# RMSE = sqrt((0.04 + 1 + 4 + 0)/4) = sqrt(1.26)
GT = np.array([1.0, 2.0, 4.0, 10.0])
DP = np.array([1.2, 3.0, 2.0, 10.0])


def test_depth_example():
    assert M.depth_accuracy(DP, GT) == approx(0.5)
    assert M.depth_accuracy(DP, GT, threshold=1.25 ** 2) == approx(0.75)
    assert M.depth_accuracy(DP, GT, threshold=1.25 ** 3) == approx(0.75)
    assert M.depth_accuracy(DP, GT, threshold=2.5) == approx(1.0)
    assert M.abs_rel_diff(DP, GT) == approx(0.3)
    assert M.rmse(DP, GT) == approx(math.sqrt(1.26))
    rep = M.depth_report(DP.reshape(2, 2), GT.reshape(2, 2))
    assert rep == approx({"delta1": 0.5, "delta2": 0.75, "delta3": 0.75,
                          "ard": 0.3, "rmse": math.sqrt(1.26)})


def test_depth_mask_and_strict_threshold():
    mask = np.array([1, 1, 0, 0], dtype=bool)
    # only first two pixels: ratios 1.2, 1.5 -> delta1 = 1/2
    # ARD = (0.2 + 0.5)/2 = 0.35 ; RMSE = sqrt((0.04 + 1)/2) = sqrt(0.52)
    rep = M.depth_report(DP, GT, mask=mask)
    assert rep["delta1"] == approx(0.5)
    assert rep["delta3"] == approx(1.0)
    assert rep["ard"] == approx(0.35)
    assert rep["rmse"] == approx(math.sqrt(0.52))
    # ratio exactly at the threshold does not count (strict <)
    assert M.depth_accuracy([1.25], [1.0]) == 0.0


def test_depth_zero_gt_eps_clamp():
    # both zero -> both clamped to eps -> ratio 1 -> correct, ARD 0
    assert M.depth_accuracy([0.0, 1.0], [0.0, 1.0]) == 1.0
    assert M.abs_rel_diff([0.0, 1.0], [0.0, 1.0]) == 0.0
    # gt 0, pred 1 with eps=0.5: ratio = 1/0.5 = 2 -> wrong; ARD = |1-0|/0.5 = 2
    assert M.depth_accuracy([1.0], [0.0], eps=0.5) == 0.0
    assert M.abs_rel_diff([1.0], [0.0], eps=0.5) == approx(2.0)
    # default eps is tiny: ARD is huge but finite
    ard = M.abs_rel_diff([1.0], [0.0])
    assert np.isfinite(ard) and ard == approx(1.0 / M.DEPTH_EPS)


def test_depth_errors():
    with pytest.raises(ValueError, match="shape mismatch"):
        M.rmse(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="shape mismatch"):
        M.depth_accuracy(np.ones(4), np.ones(4), mask=np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="NaN"):
        M.abs_rel_diff(np.array([1.0, np.nan]), np.ones(2))
    with pytest.raises(ValueError, match="empty"):
        M.depth_report(np.ones(4), np.ones(4), mask=np.zeros(4, dtype=bool))


# ----------------------------------------------------------------- point sets/meshes
def test_single_point_distances():
    a, b = [[0, 0, 0]], [[3, 4, 0]]
    # |(3,4,0)| = sqrt(9+16) = 5 both ways
    assert M.chamfer_distance(a, b) == approx(5.0)
    assert M.chamfer_distance(a, b, squared=True) == approx(25.0)
    assert M.hausdorff_distance(a, b) == approx(5.0)


def test_chamfer_hausdorff_asymmetric_sets():
    a = np.array([[0, 0, 0], [2, 0, 0]], dtype=float)
    b = np.array([[0, 0, 0]], dtype=float)
    # a->b: [0, 2] mean 1 ; b->a: [0] mean 0 ; chamfer = (1 + 0)/2 = 0.5
    assert M.chamfer_distance(a, b) == approx(0.5)
    assert M.chamfer_distance(b, a) == approx(0.5)
    # squared: a->b [0, 4] mean 2 ; b->a 0 ; (2 + 0)/2 = 1
    assert M.chamfer_distance(a, b, squared=True) == approx(1.0)
    # hausdorff = max(max[0,2], max[0]) = 2
    assert M.hausdorff_distance(a, b) == approx(2.0)
    assert M.hausdorff_distance(b, a) == approx(2.0)



def test_surface_distances_hd95_is_the_larger_direction_95th_percentile():
    a = np.array([[float(x), 0, 0] for x in range(21)])  # a->b: 0, 1, ..., 20 (b is the origin)
    b = np.zeros((1, 3))
    d = M.surface_distances(a, b)
    assert d["chamfer"] == approx(M.chamfer_distance(a, b)) == approx((10.0 + 0.0) / 2)
    assert d["hausdorff"] == approx(M.hausdorff_distance(a, b)) == approx(20.0)
    assert d["hd95"] == approx(19.0)  # 95th percentile of 0..20; b->a is 0
    assert M.surface_distances(b, a) == d
    with pytest.raises(ValueError, match="empty"):
        M.surface_distances(np.zeros((0, 3)), b)


def test_f_score():
    pred = [[0, 0, 0], [1, 0, 0], [5, 0, 0]]
    ref = [[0, 0.1, 0], [1, 0.1, 0]]
    # pred->ref: 0.1, 0.1, ~4.0  -> precision at 0.5 = 2/3
    # ref->pred: 0.1, 0.1        -> recall = 1
    # F = 2 * (2/3) * 1 / (2/3 + 1) = (4/3)/(5/3) = 0.8
    assert M.f_score(pred, ref, tau=0.5) == approx(0.8)
    rep = M.surface_report(pred, ref, tau=0.5)
    assert rep["precision"] == approx(2 / 3)
    assert rep["recall"] == approx(1.0)
    assert rep["fscore"] == approx(0.8)
    # chamfer = ((0.1 + 0.1 + |(4,-0.1,0)|)/3 + 0.1)/2
    assert rep["chamfer"] == approx(((0.2 + math.hypot(4, 0.1)) / 3 + 0.1) / 2)
    assert rep["hausdorff"] == approx(math.hypot(4, 0.1))
    # nothing within 0.05 -> P = R = 0 -> F defined as 0
    assert M.f_score(pred, ref, tau=0.05) == 0.0
    # boundary: distance 5 with tau 5 counts (d <= tau), with 4.9 it does not
    assert M.f_score([[0, 0, 0]], [[3, 4, 0]], tau=5.0) == approx(1.0)
    assert M.f_score([[0, 0, 0]], [[3, 4, 0]], tau=4.9) == 0.0
    with pytest.raises(ValueError, match="tau"):
        M.f_score(pred, ref, tau=0.0)


def test_vertex_mae():
    a = [[0, 0, 0], [1, 1, 1]]
    b = [[3, 4, 0], [1, 1, 2]]
    # |(3,4,0)| = 5, |(0,0,1)| = 1 -> mean 3
    assert M.vertex_mae(a, b) == approx(3.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        M.vertex_mae(a, [[3, 4, 0]])


def test_mesh_inputs_vtk_and_pyvista():
    vtk_pts_mod = pytest.importorskip("vtkmodules.vtkCommonCore")
    vtk_dm = pytest.importorskip("vtkmodules.vtkCommonDataModel")
    pts = vtk_pts_mod.vtkPoints()
    pts.InsertNextPoint(0.0, 0.0, 0.0)
    pts.InsertNextPoint(2.0, 0.0, 0.0)
    poly = vtk_dm.vtkPolyData()
    poly.SetPoints(pts)
    np.testing.assert_allclose(M.as_points(poly), [[0, 0, 0], [2, 0, 0]])
    assert M.chamfer_distance(poly, [[0, 0, 0]]) == approx(0.5)

    pv = pytest.importorskip("pyvista")
    mesh = pv.PolyData(np.array([[3.0, 4.0, 0.0]]))
    assert M.hausdorff_distance(mesh, np.zeros((1, 3))) == approx(5.0)
    with pytest.raises(ValueError, match="no points"):
        M.as_points(vtk_dm.vtkPolyData())


def test_point_errors():
    with pytest.raises(ValueError, match="empty"):
        M.chamfer_distance(np.zeros((0, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        M.hausdorff_distance([[0, 0, np.nan]], [[0, 0, 0]])
    with pytest.raises(ValueError, match="dimension mismatch"):
        M.chamfer_distance(np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        M.as_points(np.zeros(3))


# -------------------------------------------------------------------- classification
def test_confusion_accuracy_precision_f1():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    # rows = true, cols = pred
    expected = [[1, 1, 0],
                [0, 2, 0],
                [1, 0, 1]]
    assert M.confusion_matrix(y_true, y_pred).tolist() == expected
    assert M.accuracy(y_true, y_pred) == approx(4 / 6)          # idx 0,2,3,4 correct
    # precision per class = TP / column sum: 1/2, 2/3, 1/1 -> mean 13/18
    assert M.macro_precision(y_true, y_pred) == approx((1 / 2 + 2 / 3 + 1) / 3)
    # F1 = 2TP/(col sum + row sum): 2/(2+2), 4/(3+2), 2/(1+2) -> (0.5+0.8+2/3)/3 = 59/90
    assert M.macro_f1(y_true, y_pred) == approx(59 / 90)
    rep = M.classification_report(y_true, y_pred)
    assert rep["confusion_matrix"] == expected
    assert rep["auc_ovr"] is None                               # labels only: no AUC
    assert rep["macro_f1"] == approx(59 / 90)


def test_macro_averages_over_present_classes():
    # classes 1 and 2 never occur -> averaged over class 0 only
    assert M.macro_f1([0, 0], [0, 0], n_classes=3) == approx(1.0)
    assert M.confusion_matrix([0, 0], [0, 0], n_classes=3).tolist() == [[2, 0, 0], [0, 0, 0], [0, 0, 0]]
    # class 1 never predicted: precision 0 for it; class 0: 1/2 -> 0.25
    assert M.macro_precision([0, 1], [0, 0]) == approx(0.25)
    # F1: class 0: 2/(2+1) = 2/3, class 1: 0 -> 1/3
    assert M.macro_f1([0, 1], [0, 0]) == approx(1 / 3)


def _binary_probs(scores):
    s = np.asarray(scores, dtype=float)
    return np.stack([1 - s, s], axis=1)


def test_auc_rank_formula():
    y = [0, 0, 1, 1]
    assert M.roc_auc_ovr(y, _binary_probs([0.1, 0.2, 0.8, 0.9])) == approx(1.0)   # perfect
    assert M.roc_auc_ovr(y, _binary_probs([0.9, 0.8, 0.2, 0.1])) == approx(0.0)   # reversed
    assert M.roc_auc_ovr([0, 1], _binary_probs([0.5, 0.5])) == approx(0.5)       # single tie
    # pos scores {0.5, 0.9}, neg {0.1, 0.5}: pairs 0.5>0.1 (1), 0.5=0.5 (0.5),
    # 0.9>0.1 (1), 0.9>0.5 (1) -> 3.5/4 = 0.875 (class 0 is the mirror image: same)
    assert M.roc_auc_ovr(y, _binary_probs([0.1, 0.5, 0.5, 0.9])) == approx(0.875)


def test_auc_multiclass_and_report():
    y = [0, 1, 2, 2]
    prob = np.array([[0.6, 0.3, 0.1],
                     [0.5, 0.4, 0.1],
                     [0.2, 0.3, 0.5],
                     [0.1, 0.6, 0.3]])
    # class 0: pos .6 vs neg .5,.2,.1 -> 3/3
    # class 1: pos .4 vs neg .3,.3,.6 -> 2/3
    # class 2: pos .5,.3 vs neg .1,.1 -> 4/4
    # macro = (1 + 2/3 + 1)/3 = 8/9
    assert M.roc_auc_ovr(y, prob) == approx(8 / 9)
    rep = M.classification_report(y, prob)
    # argmax -> [0, 0, 2, 1]: correct idx 0 and 2 -> 0.5
    assert rep["accuracy"] == approx(0.5)
    assert rep["confusion_matrix"] == [[1, 0, 0], [1, 0, 0], [0, 1, 1]]
    # precision: 1/2, 0/1, 1/1 -> 1/2 ; F1: 2/3, 0, 2/3 -> 4/9
    assert rep["macro_precision"] == approx(0.5)
    assert rep["macro_f1"] == approx(4 / 9)
    assert rep["auc_ovr"] == approx(8 / 9)
    # class 2 absent from y_true is skipped in the AUC average
    prob3 = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])
    assert M.roc_auc_ovr([0, 0, 1, 1], prob3) == approx(1.0)
    assert math.isnan(M.roc_auc_ovr([1, 1], _binary_probs([0.2, 0.3])))


def test_classification_errors():
    with pytest.raises(ValueError, match="shape mismatch"):
        M.accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="out of range"):
        M.confusion_matrix([0, 3], [0, 1], n_classes=3)
    with pytest.raises(ValueError, match="integers"):
        M.accuracy([0, 1], [0.2, 0.7])
    with pytest.raises(ValueError, match="columns"):
        M.classification_report([0, 1], _binary_probs([0.2, 0.7]), n_classes=3)
    with pytest.raises(ValueError, match="NaN"):
        M.roc_auc_ovr([0, 1], np.array([[0.5, np.nan], [0.5, 0.5]]))
    with pytest.raises(ValueError, match="shape mismatch"):
        M.roc_auc_ovr([0, 1, 1], _binary_probs([0.2, 0.7]))
