"""Evaluation metrics shared by all VesselRecon modules.

Everything here takes numpy arrays (torch tensors and array-likes are converted) and
returns plain Python floats, dicts or numpy arrays. Inputs are validated: a shape
mismatch, an empty point set or a NaN raises ``ValueError`` with a clear message.

Groups:

* Segmentation (binary masks of any dimension): :func:`dice`, :func:`iou`
  (alias :data:`jaccard`), :func:`jaccard_distance`, :func:`precision`,
  :func:`recall`, :func:`false_positive_rate`, :func:`segmentation_report`.
* Depth maps (threshold accuracy, ARD and RMSE as in "3D vessel reconstruction in
  OCT-angiography via depth map estimation"): :func:`depth_accuracy`,
  :func:`abs_rel_diff`, :func:`rmse`, :func:`depth_report`.
* Point sets / meshes: :func:`as_points`, :func:`chamfer_distance`,
  :func:`hausdorff_distance`, :func:`surface_distances`, :func:`f_score`, :func:`vertex_mae`,
  :func:`surface_report`.
* Classification: :func:`accuracy`, :func:`confusion_matrix`,
  :func:`macro_precision`, :func:`macro_f1`, :func:`roc_auc_ovr`,
  :func:`classification_report`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial import cKDTree

__all__ = [
    "dice", "iou", "jaccard", "jaccard_distance", "precision", "recall",
    "false_positive_rate", "segmentation_report",
    "depth_accuracy", "abs_rel_diff", "rmse", "depth_report",
    "as_points", "chamfer_distance", "hausdorff_distance", "surface_distances", "f_score",
    "vertex_mae", "surface_report",
    "accuracy", "confusion_matrix", "macro_precision", "macro_f1", "roc_auc_ovr",
    "classification_report",
]

DEPTH_EPS = 1e-6


# --------------------------------------------------------------------------- helpers
def _to_numpy(x: Any, name: str = "input") -> np.ndarray:
    """Convert arrays, array-likes and (CPU or GPU) torch tensors to numpy."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name}: cannot convert {type(x).__name__} to a numpy array") from exc


def _check_finite(arr: np.ndarray, name: str) -> None:
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")


def _check_same_shape(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {na} has shape {a.shape}, {nb} has shape {b.shape}")


def _ratio(num: float, den: float, if_zero: float) -> float:
    return float(num) / float(den) if den else float(if_zero)


# ---------------------------------------------------------------------- segmentation
def _mask_pair(pred: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate two masks; non-zero means foreground."""
    p = _to_numpy(pred, "pred")
    r = _to_numpy(ref, "ref")
    _check_same_shape(p, r, "pred", "ref")
    _check_finite(p, "pred")
    _check_finite(r, "ref")
    return p.astype(bool), r.astype(bool)


def _counts(pred: Any, ref: Any) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) voxel counts of two binary masks."""
    p, r = _mask_pair(pred, ref)
    tp = int(np.count_nonzero(p & r))
    fp = int(np.count_nonzero(p & ~r))
    fn = int(np.count_nonzero(~p & r))
    tn = int(p.size - tp - fp - fn)
    return tp, fp, fn, tn


# Empty-mask convention (applies to dice, iou, precision, recall):
# a 0/0 score is 1.0 when both masks are empty (nothing to find, nothing wrongly found)
# and 0.0 otherwise. The false positive rate is 0.0 when ref has no background voxels.

def dice(pred: Any, ref: Any) -> float:
    """Dice = 2|P∩R| / (|P|+|R|). Both masks empty -> 1.0."""
    tp, fp, fn, _ = _counts(pred, ref)
    return _ratio(2 * tp, 2 * tp + fp + fn, 1.0)


def iou(pred: Any, ref: Any) -> float:
    """Intersection over union (Jaccard index) |P∩R| / |P∪R|. Both masks empty -> 1.0."""
    tp, fp, fn, _ = _counts(pred, ref)
    return _ratio(tp, tp + fp + fn, 1.0)


jaccard = iou


def jaccard_distance(pred: Any, ref: Any) -> float:
    """1 - IoU. Both masks empty -> 0.0."""
    return 1.0 - iou(pred, ref)


def precision(pred: Any, ref: Any) -> float:
    """TP / (TP+FP). Empty pred -> 1.0 if ref is empty too, else 0.0."""
    tp, fp, fn, _ = _counts(pred, ref)
    return _ratio(tp, tp + fp, 1.0 if fn == 0 else 0.0)


def recall(pred: Any, ref: Any) -> float:
    """TP / (TP+FN) (sensitivity). Empty ref -> 1.0 if pred is empty too, else 0.0."""
    tp, fp, fn, _ = _counts(pred, ref)
    return _ratio(tp, tp + fn, 1.0 if fp == 0 else 0.0)


def false_positive_rate(pred: Any, ref: Any) -> float:
    """FP / (FP+TN) = 1 - specificity. Ref without background voxels -> 0.0."""
    _, fp, _, tn = _counts(pred, ref)
    return _ratio(fp, fp + tn, 0.0)


def segmentation_report(pred: Any, ref: Any) -> dict[str, float]:
    """All segmentation metrics: dice, iou, jaccard_distance, precision, recall, fpr."""
    tp, fp, fn, tn = _counts(pred, ref)
    i = _ratio(tp, tp + fp + fn, 1.0)
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, 1.0),
        "iou": i,
        "jaccard_distance": 1.0 - i,
        "precision": _ratio(tp, tp + fp, 1.0 if fn == 0 else 0.0),
        "recall": _ratio(tp, tp + fn, 1.0 if fp == 0 else 0.0),
        "fpr": _ratio(fp, fp + tn, 0.0),
    }


# ----------------------------------------------------------------------------- depth
def _depth_values(pred: Any, gt: Any, mask: Any | None) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 (pred, gt) values inside ``mask`` (all pixels if None)."""
    p = _to_numpy(pred, "pred").astype(np.float64)
    g = _to_numpy(gt, "gt").astype(np.float64)
    _check_same_shape(p, g, "pred", "gt")
    _check_finite(p, "pred")
    _check_finite(g, "gt")
    if mask is not None:
        m = _to_numpy(mask, "mask")
        _check_same_shape(m, g, "mask", "gt")
        _check_finite(m, "mask")
        m = m.astype(bool)
        p, g = p[m], g[m]
    p, g = p.ravel(), g.ravel()
    if p.size == 0:
        raise ValueError("no pixels to evaluate (empty depth map or empty mask)")
    return p, g


def depth_accuracy(pred: Any, gt: Any, threshold: float = 1.25, mask: Any | None = None,
                   eps: float = DEPTH_EPS) -> float:
    """Fraction of pixels with max(pred/gt, gt/pred) < threshold.

    Both depths are clamped to ``>= eps`` before dividing, so gt == 0 (or pred == 0)
    gives a huge ratio (counted wrong) unless both are ~0 (ratio 1, counted right).
    Usual thresholds are 1.25, 1.25**2, 1.25**3 (delta1..3).
    """
    p, g = _depth_values(pred, gt, mask)
    p, g = np.maximum(p, eps), np.maximum(g, eps)
    ratio = np.maximum(p / g, g / p)
    return float(np.mean(ratio < threshold))


def abs_rel_diff(pred: Any, gt: Any, mask: Any | None = None, eps: float = DEPTH_EPS) -> float:
    """Absolute relative difference ARD = mean(|pred - gt| / max(gt, eps))."""
    p, g = _depth_values(pred, gt, mask)
    return float(np.mean(np.abs(p - g) / np.maximum(g, eps)))


def rmse(pred: Any, gt: Any, mask: Any | None = None) -> float:
    """Root mean squared error sqrt(mean((pred - gt)**2)) (no clamping)."""
    p, g = _depth_values(pred, gt, mask)
    return float(np.sqrt(np.mean((p - g) ** 2)))


def depth_report(pred: Any, gt: Any, mask: Any | None = None,
                 eps: float = DEPTH_EPS) -> dict[str, float]:
    """delta1/2/3 (thresholds 1.25, 1.25**2, 1.25**3), ard and rmse."""
    return {
        "delta1": depth_accuracy(pred, gt, 1.25, mask, eps),
        "delta2": depth_accuracy(pred, gt, 1.25 ** 2, mask, eps),
        "delta3": depth_accuracy(pred, gt, 1.25 ** 3, mask, eps),
        "ard": abs_rel_diff(pred, gt, mask, eps),
        "rmse": rmse(pred, gt, mask),
    }


# ----------------------------------------------------------------- point sets/meshes
def as_points(x: Any, name: str = "points") -> np.ndarray:
    """(N, D) float64 array of points from an array, a pyvista mesh or a vtkPolyData/vtkPointSet.

    Raises ValueError for an empty set, a non-2D array or NaNs.
    """
    if hasattr(x, "GetPoints") and not isinstance(x, np.ndarray):  # any VTK point set
        vtk_pts = x.GetPoints()
        if vtk_pts is None:
            raise ValueError(f"{name}: VTK object has no points")
        from vtkmodules.util import numpy_support  # lazy: VTK only needed for VTK inputs

        arr = numpy_support.vtk_to_numpy(vtk_pts.GetData())
    elif hasattr(x, "points") and not isinstance(x, np.ndarray):  # e.g. pyvista without VTK API
        arr = np.asarray(x.points)
    else:
        arr = _to_numpy(x, name)
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected an (N, D) array of points, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: empty point set")
    _check_finite(arr, name)
    return arr


def _nn_distances(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from every point of a to its nearest in b, and vice versa."""
    pa, pb = as_points(a, "a"), as_points(b, "b")
    if pa.shape[1] != pb.shape[1]:
        raise ValueError(f"dimension mismatch: a has {pa.shape[1]}-D points, b has {pb.shape[1]}-D")
    d_ab, _ = cKDTree(pb).query(pa)
    d_ba, _ = cKDTree(pa).query(pb)
    return np.asarray(d_ab, dtype=np.float64), np.asarray(d_ba, dtype=np.float64)


def chamfer_distance(a: Any, b: Any, squared: bool = False) -> float:
    """Symmetric Chamfer distance: (mean_a min_b d + mean_b min_a d) / 2.

    d is the plain (non-squared) Euclidean distance; ``squared=True`` averages d**2
    instead, as some point-cloud papers do.
    """
    d_ab, d_ba = _nn_distances(a, b)
    if squared:
        d_ab, d_ba = d_ab ** 2, d_ba ** 2
    return float(0.5 * (d_ab.mean() + d_ba.mean()))


def hausdorff_distance(a: Any, b: Any) -> float:
    """Symmetric Hausdorff distance: max(max_a min_b d, max_b min_a d)."""
    d_ab, d_ba = _nn_distances(a, b)
    return float(max(d_ab.max(), d_ba.max()))


def surface_distances(a: Any, b: Any) -> dict[str, float]:
    """``chamfer``, ``hausdorff`` and ``hd95`` (the larger of the two directions' 95th percentiles) from one
    pair of nearest-neighbour queries."""
    d_ab, d_ba = _nn_distances(a, b)
    return {"chamfer": float(0.5 * (d_ab.mean() + d_ba.mean())), "hausdorff": float(max(d_ab.max(), d_ba.max())),
            "hd95": float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))}


def _precision_recall_at(pred: Any, ref: Any, tau: float) -> tuple[float, float]:
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    d_pr, d_rp = _nn_distances(pred, ref)
    return float(np.mean(d_pr <= tau)), float(np.mean(d_rp <= tau))


def f_score(pred: Any, ref: Any, tau: float) -> float:
    """F-score at distance tau (Tatarchenko et al. 2019 / Tanks and Temples).

    precision = fraction of pred points with a ref point within tau (d <= tau),
    recall = fraction of ref points with a pred point within tau,
    F = 2PR / (P+R), 0.0 when P + R == 0.
    """
    p, r = _precision_recall_at(pred, ref, tau)
    return _ratio(2 * p * r, p + r, 0.0)


def vertex_mae(a: Any, b: Any) -> float:
    """Mean Euclidean distance between corresponding vertices a[i], b[i] (same shape required)."""
    pa, pb = as_points(a, "a"), as_points(b, "b")
    _check_same_shape(pa, pb, "a", "b")
    return float(np.mean(np.linalg.norm(pa - pb, axis=1)))


def surface_report(pred: Any, ref: Any, tau: float) -> dict[str, float]:
    """chamfer, hausdorff, and precision/recall/fscore at tau for two point sets or meshes."""
    p, r = _precision_recall_at(pred, ref, tau)
    return {
        "chamfer": chamfer_distance(pred, ref),
        "hausdorff": hausdorff_distance(pred, ref),
        "precision": p,
        "recall": r,
        "fscore": _ratio(2 * p * r, p + r, 0.0),
    }


# -------------------------------------------------------------------- classification
def _labels(y: Any, name: str) -> np.ndarray:
    """1-D array of non-negative integer class labels."""
    arr = _to_numpy(y, name)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of class labels, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: empty")
    _check_finite(arr, name)
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind != "f" or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name}: labels must be integers (pass probabilities as an (N, C) array)")
        arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise ValueError(f"{name}: labels must be >= 0")
    return arr.astype(np.int64)


def _n_classes(n_classes: int | None, *label_arrays: np.ndarray) -> int:
    needed = int(max(int(a.max()) for a in label_arrays)) + 1
    if n_classes is None:
        return needed
    if needed > n_classes:
        raise ValueError(f"label {needed - 1} out of range for n_classes={n_classes}")
    return int(n_classes)


def _truth_and_pred(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    _check_same_shape(t, p, "y_true", "y_pred")
    return t, p


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of correct labels."""
    t, p = _truth_and_pred(y_true, y_pred)
    return float(np.mean(t == p))


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int | None = None) -> np.ndarray:
    """(C, C) int64 counts; rows = true class, columns = predicted class."""
    t, p = _truth_and_pred(y_true, y_pred)
    c = _n_classes(n_classes, t, p)
    cm = np.zeros((c, c), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def _present(cm: np.ndarray) -> np.ndarray:
    """Classes occurring in y_true or y_pred (the classes macro averages run over)."""
    return (cm.sum(axis=0) + cm.sum(axis=1)) > 0


def macro_precision(y_true: Any, y_pred: Any, n_classes: int | None = None) -> float:
    """Unweighted mean of per-class TP/(TP+FP) over classes present in y_true or y_pred.

    A class that is never predicted has precision 0.0.
    """
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp, pred_count = np.diag(cm), cm.sum(axis=0)
    per_class = np.divide(tp, pred_count, out=np.zeros(len(tp)), where=pred_count > 0)
    return float(per_class[_present(cm)].mean())


def macro_f1(y_true: Any, y_pred: Any, n_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 = 2TP/(2TP+FP+FN) over classes present in y_true or y_pred."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm)
    den = cm.sum(axis=0) + cm.sum(axis=1)  # (TP+FP) + (TP+FN)
    keep = _present(cm)
    return float(np.mean(2 * tp[keep] / den[keep]))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, ties get the mean of their ranks."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of the last element of each tie group
    return (last - (counts - 1) / 2.0)[inverse.ravel()]


def _binary_auc(is_pos: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC = P(score_pos > score_neg) + 0.5 P(tie)."""
    n_pos = int(is_pos.sum())
    n_neg = is_pos.size - n_pos
    ranks = _average_ranks(score)
    return float((ranks[is_pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _probabilities(y_prob: Any, n: int, n_classes: int | None) -> np.ndarray:
    prob = _to_numpy(y_prob, "y_prob").astype(np.float64)
    if prob.ndim != 2:
        raise ValueError(f"y_prob: expected an (N, C) array of class scores, got shape {prob.shape}")
    if prob.shape[0] != n:
        raise ValueError(f"shape mismatch: y_true has {n} samples, y_prob has {prob.shape[0]}")
    if n_classes is not None and prob.shape[1] != n_classes:
        raise ValueError(f"y_prob has {prob.shape[1]} columns but n_classes={n_classes}")
    _check_finite(prob, "y_prob")
    return prob


def roc_auc_ovr(y_true: Any, y_prob: Any) -> float:
    """One-vs-rest macro ROC AUC from (N, C) scores via the rank (Mann-Whitney) formula.

    Tied scores count 1/2. Classes without both positives and negatives in y_true are
    skipped; returns nan if no class can be scored.
    """
    t = _labels(y_true, "y_true")
    prob = _probabilities(y_prob, t.size, None)
    _n_classes(prob.shape[1], t)
    aucs = []
    for c in range(prob.shape[1]):
        is_pos = t == c
        if 0 < is_pos.sum() < t.size:
            aucs.append(_binary_auc(is_pos, prob[:, c]))
    return float(np.mean(aucs)) if aucs else float("nan")


def classification_report(y_true: Any, y_prob_or_pred: Any,
                          n_classes: int | None = None) -> dict[str, Any]:
    """accuracy, macro_precision, macro_f1, auc_ovr, confusion_matrix (nested list, rows true).

    ``y_prob_or_pred`` is either (N,) predicted labels (auc_ovr is then None) or (N, C)
    class probabilities/scores (predictions are their argmax).
    """
    t = _labels(y_true, "y_true")
    arr = _to_numpy(y_prob_or_pred, "y_prob_or_pred")
    auc: float | None = None
    if arr.ndim == 2:
        prob = _probabilities(arr, t.size, n_classes)
        n_classes = prob.shape[1]
        pred = prob.argmax(axis=1)
        auc = roc_auc_ovr(t, prob)
    else:
        pred = _labels(arr, "y_pred")
    cm = confusion_matrix(t, pred, n_classes)
    return {
        "accuracy": accuracy(t, pred),
        "macro_precision": macro_precision(t, pred, cm.shape[0]),
        "macro_f1": macro_f1(t, pred, cm.shape[0]),
        "auc_ovr": auc,
        "confusion_matrix": cm.tolist(),
        "n_samples": int(t.size),
    }
