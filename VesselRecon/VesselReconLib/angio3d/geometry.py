"""C-arm projection geometry following the DICOM XA conventions, and its two-view refinement.

Conventions (DICOM PS3.3 C.8.7.5, patient coordinates LPS, isocentre at the origin):

- ``PositionerPrimaryAngle`` alpha: rotation in the transverse plane, LAO positive, RAO negative.
- ``PositionerSecondaryAngle`` beta: tilt out of the transverse plane, CRA positive, CAU negative.
- At (0, 0) the source is posterior and the detector anterior (AP view); the image is displayed as
  seen from the front: columns run towards the patient's left (+x), rows towards the feet (-z).
- The unit vector from the isocentre to the detector is ``d = (sin a cos b, -cos a cos b, sin b)``;
  the source sits at ``-SOD d`` and the detector centre at ``(SID - SOD) d``.
- ``ImagerPixelSpacing`` is (row spacing, column spacing) in mm at the detector; pixel (0, 0) is the
  centre of the first pixel, the principal point is the detector centre.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from ..errors import InputError


_U_AXIS, _V_AXIS, _D_AXIS = np.array([1.0, 0, 0]), np.array([0, 0, -1.0]), np.array([0, -1.0, 0])   # in the C-arm frame


@dataclass(frozen=True)
class CArmGeometry:
    """One view's acquisition geometry, in DICOM XA terms (angles in degrees, distances in mm)."""

    primary_angle: float = 0.0
    secondary_angle: float = 0.0
    sid: float = 1100.0
    sod: float = 760.0
    pixel_spacing: tuple[float, float] = (0.3, 0.3)
    rows: int = 512
    columns: int = 512
    offset: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self):
        values = (self.primary_angle, self.secondary_angle, self.sid, self.sod, *self.pixel_spacing, *self.offset)
        if len(self.pixel_spacing) != 2 or not np.isfinite(np.asarray(values, float)).all():
            raise InputError(f"The C-arm geometry has a missing or non-finite value (angles {self.primary_angle}, "
                             f"{self.secondary_angle}; SID {self.sid}; SOD {self.sod}; pixel spacing "
                             f"{self.pixel_spacing}): type in the true values.")
        if abs(self.primary_angle) > 360 or abs(self.secondary_angle) > 90:
            raise InputError(f"C-arm angles {self.primary_angle}, {self.secondary_angle} degrees are out of range: "
                             "the primary angle lies within ±360 and the secondary within ±90 degrees.")
        if not (self.sid > 0 and 0 < self.sod < self.sid):
            raise InputError(f"Need 0 < DistanceSourceToPatient ({self.sod}) < DistanceSourceToDetector "
                             f"({self.sid}); check the acquisition geometry.")
        if min(self.pixel_spacing) <= 0 or self.rows < 8 or self.columns < 8:
            raise InputError("ImagerPixelSpacing must be positive and the image at least 8x8 pixels.")

    # -- DICOM-style dictionaries -----------------------------------------------------------
    def to_dicom(self) -> dict:
        """The geometry as DICOM XA keywords (plus the refinement offset in pixels)."""
        return {"PositionerPrimaryAngle": float(self.primary_angle),
                "PositionerSecondaryAngle": float(self.secondary_angle),
                "DistanceSourceToDetector": float(self.sid), "DistanceSourceToPatient": float(self.sod),
                "ImagerPixelSpacing": [float(s) for s in self.pixel_spacing],
                "Rows": int(self.rows), "Columns": int(self.columns),
                "DetectorOffsetPixels": [float(o) for o in self.offset]}

    @classmethod
    def from_dicom(cls, tags: dict) -> "CArmGeometry":
        """Build from DICOM XA keywords (a dict, or anything with ``get``)."""
        missing = [k for k in ("PositionerPrimaryAngle", "PositionerSecondaryAngle", "DistanceSourceToDetector",
                               "DistanceSourceToPatient", "Rows", "Columns") if tags.get(k) is None]
        if missing:
            raise InputError(f"The acquisition geometry lacks {', '.join(missing)}; type it in by hand.")
        spacing = tags.get("ImagerPixelSpacing") or tags.get("PixelSpacing") or (0.3, 0.3)
        try:
            spacing = [float(s) for s in (spacing if isinstance(spacing, (list, tuple, np.ndarray)) else [spacing] * 2)]
            if len(spacing) != 2:
                raise InputError(f"ImagerPixelSpacing has {len(spacing)} values {spacing}; it needs two "
                                 "(row and column spacing in mm).")
            return cls(float(tags["PositionerPrimaryAngle"]), float(tags["PositionerSecondaryAngle"]),
                       float(tags["DistanceSourceToDetector"]), float(tags["DistanceSourceToPatient"]),
                       (spacing[0], spacing[1]), int(tags["Rows"]), int(tags["Columns"]),
                       tuple(float(o) for o in tags.get("DetectorOffsetPixels", (0.0, 0.0))))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"A C-arm geometry attribute is malformed ({exc}): angles in degrees, SID, SOD and "
                             "pixel spacing in mm must be numbers.") from None

    def with_changes(self, **changes) -> "CArmGeometry":
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)

    # -- matrices -----------------------------------------------------------------------------
    @property
    def magnification(self) -> float:
        """SID / SOD: detector size of an object at the isocentre over its true size."""
        return self.sid / self.sod

    def rotation(self) -> np.ndarray:
        """3x3 matrix whose columns are the column axis u, the row axis v and the beam direction d."""
        a, b = np.radians(self.primary_angle), np.radians(self.secondary_angle)
        rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, np.cos(b), np.sin(b)], [0, -np.sin(b), np.cos(b)]])
        frame = rz @ rx
        return np.stack([frame @ _U_AXIS, frame @ _V_AXIS, frame @ _D_AXIS], axis=1)

    @property
    def direction(self) -> np.ndarray:
        """Unit vector from the source through the isocentre towards the detector."""
        return self.rotation()[:, 2]

    @property
    def source(self) -> np.ndarray:
        return -self.sod * self.direction

    def intrinsics(self) -> np.ndarray:
        fc = self.sid / self.pixel_spacing[1]
        fr = self.sid / self.pixel_spacing[0]
        cx = (self.columns - 1) / 2.0 + self.offset[0]
        cy = (self.rows - 1) / 2.0 + self.offset[1]
        return np.array([[fc, 0, cx], [0, fr, cy], [0, 0, 1.0]])

    def projection_matrix(self) -> np.ndarray:
        """3x4 matrix mapping homogeneous LPS points to homogeneous pixels (column, row, 1)."""
        rotation = self.rotation()
        rc = rotation.T
        return self.intrinsics() @ np.column_stack((rc, self.sod * (rc @ rotation[:, 2])))

    def project(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) LPS mm -> (N, 2) pixel (column, row)."""
        return project(self.projection_matrix(), points)

    def pixel_rays(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Source position and unit ray directions (N, 3) through pixels (N, 2) = (column, row)."""
        pixels = np.atleast_2d(np.asarray(pixels, float))
        k = self.intrinsics()
        cam = np.c_[(pixels[:, 0] - k[0, 2]) / k[0, 0], (pixels[:, 1] - k[1, 2]) / k[1, 1], np.ones(len(pixels))]
        dirs = cam @ self.rotation().T
        return self.source, dirs / np.linalg.norm(dirs, axis=1, keepdims=True)

    def depth(self, points: np.ndarray) -> np.ndarray:
        """Distance along the beam axis from the source to each point (mm)."""
        return (np.asarray(points, float) - self.source) @ self.direction

    def mm_per_pixel_at(self, points: np.ndarray) -> np.ndarray:
        """Pixel size (mm) at each point's depth: mean detector spacing x distance from the source / SID."""
        return np.mean(self.pixel_spacing) * self.depth(points) / self.sid

    def isocentre_mm_per_pixel(self) -> float:
        """Mean pixel size at the isocentre (detector spacing / magnification)."""
        return float(np.mean(self.pixel_spacing)) / self.magnification


def project(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 3x4 projection matrix to (N, 3) points; returns (N, 2) pixels."""
    points = np.atleast_2d(np.asarray(points, float))
    homog = _homogeneous(points) @ np.asarray(matrix).T
    return homog[:, :2] / homog[:, 2:3]


def fundamental_matrix(p_a: np.ndarray, p_b: np.ndarray) -> np.ndarray:
    """F with ``x_b^T F x_a = 0`` for corresponding pixels of two projection matrices."""
    centre_a = np.linalg.svd(p_a)[2][-1]
    epipole_b = p_b @ centre_a
    skew = np.array([[0, -epipole_b[2], epipole_b[1]], [epipole_b[2], 0, -epipole_b[0]],
                     [-epipole_b[1], epipole_b[0], 0]])
    return skew @ p_b @ np.linalg.pinv(p_a)


def epipolar_distances(f: np.ndarray, pts_a: np.ndarray, pts_b: np.ndarray) -> np.ndarray:
    """Symmetric point-to-epipolar-line distances (pixels), shape (N, 2): in view B and in view A."""
    ha, hb = _homogeneous(pts_a), _homogeneous(pts_b)
    lines_b = ha @ f.T
    lines_a = hb @ f
    d_b = np.abs((lines_b * hb).sum(1)) / np.linalg.norm(lines_b[:, :2], axis=1)
    d_a = np.abs((lines_a * ha).sum(1)) / np.linalg.norm(lines_a[:, :2], axis=1)
    return np.stack([d_b, d_a], 1)


def _homogeneous(points: np.ndarray) -> np.ndarray:
    """(N, k) points with a column of ones appended (``np.c_[points, 1]`` without its indexing overhead)."""
    points = np.atleast_2d(points)
    return np.column_stack((points, np.ones(len(points))))


def epipolar_lines(f: np.ndarray, pts_a: np.ndarray) -> np.ndarray:
    """Epipolar lines (a, b, c) in view B of pixels in view A, normalised so a^2 + b^2 = 1."""
    lines = _homogeneous(pts_a) @ f.T
    return lines / np.linalg.norm(lines[:, :2], axis=1, keepdims=True)


def triangulate_dlt(p_a: np.ndarray, p_b: np.ndarray, pts_a: np.ndarray, pts_b: np.ndarray) -> np.ndarray:
    """Linear (DLT) triangulation of corresponding pixels, vectorised; returns (N, 3)."""
    pts_a, pts_b = np.atleast_2d(pts_a), np.atleast_2d(pts_b)
    rows = np.stack([pts_a[:, :1] * p_a[2] - p_a[0], pts_a[:, 1:2] * p_a[2] - p_a[1],
                     pts_b[:, :1] * p_b[2] - p_b[0], pts_b[:, 1:2] * p_b[2] - p_b[1]], axis=1)
    scale = np.linalg.norm(rows, axis=2, keepdims=True)
    _, _, vt = np.linalg.svd(rows / scale)
    homog = vt[:, -1]
    return homog[:, :3] / homog[:, 3:4]


@dataclass
class Calibration:
    """Result of :func:`refine_calibration`."""

    geometry_a: CArmGeometry
    geometry_b: CArmGeometry
    epipolar_error_before: float
    epipolar_error_after: float
    parameters: np.ndarray


def _apply(geometry: CArmGeometry, params: np.ndarray) -> CArmGeometry:
    return geometry.with_changes(primary_angle=geometry.primary_angle + params[0],
                                 secondary_angle=geometry.secondary_angle + params[1],
                                 offset=(geometry.offset[0] + params[2], geometry.offset[1] + params[3]))


def mean_epipolar_error(geom_a: CArmGeometry, geom_b: CArmGeometry, pts_a: np.ndarray, pts_b: np.ndarray) -> float:
    """Mean symmetric epipolar distance (pixels) of corresponding points."""
    f = fundamental_matrix(geom_a.projection_matrix(), geom_b.projection_matrix())
    return float(epipolar_distances(f, pts_a, pts_b).mean())


def refine_calibration(geom_a: CArmGeometry, geom_b: CArmGeometry, pts_a: np.ndarray, pts_b: np.ndarray,
                       prior_deg: float = 2.0, prior_px: float = 10.0) -> Calibration:
    """Levenberg-Marquardt correction of view B's angles and detector offset.

    Minimises the symmetric epipolar distances of the corresponding points (the SOI start and end
    points clicked in both views) plus a weak Gaussian prior that keeps the corrections near the
    recorded geometry (``prior_deg`` degrees, ``prior_px`` pixels), so two points suffice.
    """
    from scipy.optimize import least_squares

    pts_a, pts_b = np.atleast_2d(pts_a).astype(float), np.atleast_2d(pts_b).astype(float)
    p_a = geom_a.projection_matrix()
    prior = np.array([prior_deg, prior_deg, prior_px, prior_px])
    centre_a, inverse_a = np.linalg.svd(p_a)[2][-1], np.linalg.pinv(p_a)     # fixed: only view B moves

    def residuals(params):
        p_b = _apply(geom_b, params).projection_matrix()
        e = p_b @ centre_a
        skew = np.array([[0, -e[2], e[1]], [e[2], 0, -e[0]], [-e[1], e[0], 0]])
        return np.concatenate([epipolar_distances(skew @ p_b @ inverse_a, pts_a, pts_b).ravel(), params / prior])

    before = mean_epipolar_error(geom_a, geom_b, pts_a, pts_b)
    solution = least_squares(residuals, np.zeros(4), method="lm", x_scale=prior)
    refined = _apply(geom_b, solution.x)
    after = mean_epipolar_error(geom_a, refined, pts_a, pts_b)
    if after > before:
        refined, after, solution.x[:] = geom_b, before, 0.0
    return Calibration(geom_a, refined, before, after, solution.x)
