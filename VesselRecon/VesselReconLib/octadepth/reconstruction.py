"""3D vessel network from a vessel mask and a depth map (ISBI 2021, section 2.3), vectorised.

1. cut the mask where the depth steps by more than the tolerance (vessels at different depths that
   touch in the en face image), then skeletonise it (scikit-image);
2. remove bifurcation/crossing pixels (more than two skeleton neighbours) and their neighbours, which
   splits the skeleton into simple segments (cycles are cut open);
3. lift each segment to 3D: x, y from the pixel spacing, z from the depth map (bilinear, smoothed along
   the segment) scaled to ``depth_range_mm``;
4. re-link segment ends at the removed junctions: each end joins its cheapest partner among nearby ends
   of compatible depth, preferring straight continuation (a crossing's two vessels at different depths
   stay apart, a bifurcation's branches join); links whose two ends have no other link merge their
   segments into one continuous polyline, the others (branchings) stay two-point bridges;
5. sweep one VTK tube filter over all segments, radius from the mask's distance transform (mm), capped
   at :data:`MAX_RADIUS_MM`;
6. carry the depth (mm) on the tube as the ``depth`` point array for red-near, blue-far colouring.

Points are in the *image frame*: ``x = column * spacing_x``, ``y = row * spacing_y`` and
``z = depth`` in mm (0 at the nearest, growing deeper). :func:`to_ras` places them in a scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order
from scipy.spatial import cKDTree
from skimage.morphology import skeletonize

from ..progress import as_reporter

DEFAULT_DEPTH_RANGE_MM = 0.25
"""Depth range of relative depth 0..1: about the inner retinal vascular slab (ILM to the deep plexus)."""
MAX_RADIUS_MM = 0.075
"""Largest tube radius: the widest retinal vessels (veins at the optic disc) are about 0.15 mm across."""
EIGHT = np.ones((3, 3), bool)
FORWARD_OFFSETS = ((0, 1), (1, -1), (1, 0), (1, 1))


@dataclass
class VesselNetwork3D:
    """Centrelines lifted to 3D, as concatenated polylines.

    :ivar points: ``(N, 3)`` image-frame mm (x = column, y = row, z = depth).
    :ivar radii: ``(N,)`` tube radius in mm.
    :ivar offsets: ``(S + 1,)`` start of each polyline in ``points``; the last entry is ``N``.
    :ivar bridge: ``(S,)`` True for the short polylines that re-link segments at junctions.
    """

    points: np.ndarray
    radii: np.ndarray
    offsets: np.ndarray
    bridge: np.ndarray
    junctions: int = 0
    spacing: tuple[float, float] = (1.0, 1.0)
    depth_range_mm: float = DEFAULT_DEPTH_RANGE_MM
    skeleton: np.ndarray | None = field(default=None, repr=False)

    @property
    def depth_mm(self) -> np.ndarray:
        return self.points[:, 2]

    @property
    def segment_count(self) -> int:
        return int((~self.bridge).sum())

    @property
    def link_count(self) -> int:
        return int(self.bridge.sum())

    def polylines(self) -> list[np.ndarray]:
        return [self.points[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def segment_ids(self) -> np.ndarray:
        """Polyline index of every point."""
        return np.repeat(np.arange(len(self.offsets) - 1), np.diff(self.offsets))

    def centerline_points(self) -> np.ndarray:
        """Points of the vessel segments (bridges left out), for distance metrics."""
        keep = ~self.bridge[self.segment_ids()]
        return self.points[keep]


# ------------------------------------------------------------------ skeleton and segments


def neighbour_count(skeleton: np.ndarray) -> np.ndarray:
    """Number of 8-neighbours of each skeleton pixel (0 off the skeleton)."""
    counts = ndimage.convolve(skeleton.astype(np.uint8), EIGHT.astype(np.uint8), mode="constant") - 1
    return np.where(skeleton, counts, 0)


def _branch_table() -> np.ndarray:
    """For each 8-bit neighbourhood code (ring order), the number of runs of set neighbours around
    the ring (the crossing number: 0 -> 1 transitions going round)."""
    bits = (np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1
    transitions = ((bits == 0) & (np.roll(bits, -1, axis=1) == 1)).sum(1)
    transitions[255] = 1
    return transitions.astype(np.uint8)


RING = np.array([0, 1, 2, 5, 8, 7, 6, 3])  # flat 3x3 indices of the eight neighbours
RING_WEIGHTS = np.zeros(9, np.int32)
RING_WEIGHTS[RING] = 2 ** np.arange(8)
BRANCHES = _branch_table()


def branch_count(skeleton: np.ndarray) -> np.ndarray:
    """Number of distinct branches leaving each skeleton pixel (0 off the skeleton).

    Neighbours next to each other around the ring count once, so the corner pixels of a staircase
    (three neighbours, two branches) are not taken for junctions.
    """
    codes = ndimage.correlate(skeleton.astype(np.int32), RING_WEIGHTS.reshape(3, 3), mode="constant")
    return np.where(skeleton, BRANCHES[codes], 0)


def split_at_junctions(skeleton: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Remove junction pixels (more than two neighbours, in more than two branches) and their neighbours.

    :returns: the remaining skeleton, the removed pixels, and the number of junction clusters.
    """
    junction = (neighbour_count(skeleton) > 2) & (branch_count(skeleton) > 2)
    removed = ndimage.binary_dilation(junction, EIGHT) & skeleton
    clusters = ndimage.label(junction, EIGHT)[1]
    return skeleton & ~removed, removed, clusters


def _cut_cycles(segments: np.ndarray) -> np.ndarray:
    """Open closed loops (components without an end pixel) by removing one pixel each."""
    labels, count = ndimage.label(segments, EIGHT)
    ends = np.bincount(labels[neighbour_count(segments) == 1], minlength=count + 1)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    closed = np.flatnonzero((ends == 0) & (sizes > 2))
    closed = closed[closed > 0]
    if closed.size:
        flat = labels.ravel()
        order = np.flatnonzero(np.isin(flat, closed))
        _, first = np.unique(flat[order], return_index=True)
        segments = segments.copy()
        segments.ravel()[order[first]] = False
    return segments


def order_segments(segments: np.ndarray, min_points: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Order the pixels of each simple segment from one end to the other.

    One breadth-first search from a virtual node joined to one end of every segment visits each
    segment's pixels in path order; a stable sort by segment then groups them.

    :returns: ``(M, 2)`` (row, column) pixels and ``(S + 1,)`` offsets.
    """
    segments = _cut_cycles(segments)
    rows, cols = np.nonzero(segments)
    if rows.size == 0:
        return np.zeros((0, 2), int), np.zeros(1, int)
    index = np.full(segments.shape, -1, np.int64)
    index[rows, cols] = np.arange(rows.size)
    edges = []
    height, width = segments.shape
    for dr, dc in FORWARD_OFFSETS:
        r2, c2 = rows + dr, cols + dc
        inside = (r2 >= 0) & (r2 < height) & (c2 >= 0) & (c2 < width)
        target = np.full(rows.size, -1)
        target[inside] = index[r2[inside], c2[inside]]
        hit = target >= 0
        edges.append(np.c_[np.flatnonzero(hit), target[hit]])
    labels = ndimage.label(segments, EIGHT)[0][rows, cols]
    degree = neighbour_count(segments)[rows, cols]
    # one start per segment: an end pixel when there is one (isolated pixels have degree 0)
    start_rank = np.lexsort((degree > 1, labels))
    first = np.unique(labels[start_rank], return_index=True)[1]
    starts = start_rank[first]
    source = rows.size
    edges.append(np.c_[np.full(starts.size, source), starts])
    pairs = np.concatenate(edges)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(source + 1, source + 1)).tocsr()
    order = breadth_first_order(graph, source, directed=False, return_predecessors=False)[1:]
    order = order[np.argsort(labels[order], kind="stable")]
    sizes = np.bincount(labels[order])[1:]
    offsets = np.r_[0, np.cumsum(sizes)]
    pixels = np.c_[rows[order], cols[order]]
    return _drop_short(pixels, offsets, min_points)


def _drop_short(pixels: np.ndarray, offsets: np.ndarray, min_points: int) -> tuple[np.ndarray, np.ndarray]:
    sizes = np.diff(offsets)
    keep_segment = sizes >= min_points
    keep_point = np.repeat(keep_segment, sizes)
    return pixels[keep_point], np.r_[0, np.cumsum(sizes[keep_segment])]


def depth_steps(mask: np.ndarray, depth: np.ndarray, tolerance: float) -> np.ndarray:
    """Vessel pixels deeper by more than ``tolerance`` than a vessel neighbour (relative depth).

    Cutting them from the mask before skeletonising keeps vessels at different depths (a deep
    capillary touching a superficial trunk in the en face image) from forming skeleton junctions.
    """
    shallowest = ndimage.minimum_filter(np.where(mask, depth, np.inf).astype(np.float32), size=3, mode="nearest")
    return mask & (depth - shallowest > tolerance)


def prune_spurs(pixels: np.ndarray, offsets: np.ndarray, near_junction: np.ndarray,
                radius_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop skeleton spurs: segments with one end at a junction and one free end, no longer than
    1.5 times the vessel radius at the junction end plus 2 pixels (boundary noise of wide vessels)."""
    if len(offsets) < 2:
        return pixels, offsets
    starts, stops = offsets[:-1], offsets[1:] - 1
    near_start = near_junction[pixels[starts, 0], pixels[starts, 1]]
    near_stop = near_junction[pixels[stops, 0], pixels[stops, 1]]
    anchor = np.where(near_start, starts, stops)
    sizes = np.diff(offsets)
    spur = (near_start ^ near_stop) & (sizes <= 1.5 * radius_px[pixels[anchor, 0], pixels[anchor, 1]] + 2)
    keep = np.repeat(~spur, sizes)
    return pixels[keep], np.r_[0, np.cumsum(sizes[~spur])]


def segment_moving_average(values: np.ndarray, offsets: np.ndarray, half_width: int) -> np.ndarray:
    """Moving average of ``values`` (N, ...) along each polyline, never across polylines."""
    if half_width <= 0 or len(values) == 0:
        return values.astype(float)
    sizes = np.diff(offsets)
    seg = np.repeat(np.arange(len(sizes)), sizes)
    position = np.arange(len(values))
    low = np.maximum(position - half_width, offsets[seg])
    high = np.minimum(position + half_width, offsets[seg + 1] - 1)
    cumulative = np.concatenate([np.zeros((1,) + values.shape[1:]), np.cumsum(values, axis=0)])
    count = (high - low + 1).reshape((-1,) + (1,) * (values.ndim - 1))
    return (cumulative[high + 1] - cumulative[low]) / count


# ------------------------------------------------------------------ re-linking


def _end_tangents(points: np.ndarray, offsets: np.ndarray, reach: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """End positions (2S, 3) and outward unit tangents in the image plane (2S, 2)."""
    starts, stops = offsets[:-1], offsets[1:] - 1
    inner_start = np.minimum(starts + reach, stops)
    inner_stop = np.maximum(stops - reach, starts)
    ends = np.concatenate([starts, stops])
    inner = np.concatenate([inner_start, inner_stop])
    tangent = points[ends, :2] - points[inner, :2]
    norm = np.linalg.norm(tangent, axis=1, keepdims=True)
    return ends, np.divide(tangent, norm, out=np.zeros_like(tangent), where=norm > 0)


def link_ends(points: np.ndarray, offsets: np.ndarray, end_cluster: np.ndarray, radius_mm: float,
              depth_tolerance_mm: float, radii: np.ndarray | None = None) -> np.ndarray:
    """Pairs of point indices (end, end) to bridge across removed junctions.

    ``end_cluster`` labels each segment end (starts, then stops) with the removed-junction region it
    touches (0: none). Every such end picks the cheapest other end of the same region, within
    ``radius_mm`` (or four vessel radii at either end, for wide vessels whose junction regions are long),
    whose depth differs by at most ``depth_tolerance_mm``. The cost is the gap length times
    ``2 + t_a . t_b`` (outward tangents: 1 for straight continuation, 3 for a U-turn) plus the depth
    difference in units of the tolerance.
    """
    if len(offsets) < 3:
        return np.zeros((0, 2), int)
    ends, tangents = _end_tangents(points, offsets)
    segment = np.concatenate([np.arange(len(offsets) - 1)] * 2)
    candidate = np.flatnonzero(end_cluster)
    if candidate.size < 2:
        return np.zeros((0, 2), int)
    reach = np.maximum(radius_mm, 4.0 * radii[ends]) if radii is not None else np.full(len(ends), radius_mm)
    pairs = cKDTree(points[ends[candidate], :2]).query_pairs(float(reach[candidate].max()), output_type="ndarray")
    if pairs.size == 0:
        return np.zeros((0, 2), int)
    a, b = candidate[pairs[:, 0]], candidate[pairs[:, 1]]
    gap = np.linalg.norm(points[ends[a], :2] - points[ends[b], :2], axis=1)
    depth_gap = np.abs(points[ends[a], 2] - points[ends[b], 2])
    valid = ((segment[a] != segment[b]) & (end_cluster[a] == end_cluster[b]) & (depth_gap <= depth_tolerance_mm)
             & (gap <= np.maximum(reach[a], reach[b])))
    a, b, gap, depth_gap = a[valid], b[valid], gap[valid], depth_gap[valid]
    cost = gap * (2.0 + (tangents[a] * tangents[b]).sum(1)) + depth_gap / max(depth_tolerance_mm, 1e-9) * radius_mm
    # each end keeps its cheapest partner
    both = np.r_[a, b]
    partner = np.r_[b, a]
    order = np.lexsort((np.r_[cost, cost], both))
    chosen = np.unique(both[order], return_index=True)[1]
    links = np.sort(np.c_[both[order][chosen], partner[order][chosen]], axis=1)
    links = np.unique(links, axis=0)
    return np.c_[ends[links[:, 0]], ends[links[:, 1]]]


# ------------------------------------------------------------------ main entry


def reconstruct(vessel_mask: np.ndarray, depth: np.ndarray, spacing: float | tuple[float, float],
                depth_range_mm: float = DEFAULT_DEPTH_RANGE_MM, depth_tolerance: float = 0.15,
                smoothing: int = 2, min_points: int = 2, link_radius_px: float = 8.0,
                max_radius_mm: float = MAX_RADIUS_MM, progress=None, cancel=None) -> VesselNetwork3D:
    """Build the 3D centreline network from a 2D vessel mask and a relative depth map.

    :param vessel_mask: ``(H, W)`` boolean (or probability > 0.5) vessel mask.
    :param depth: ``(H, W)`` relative depth 0 (near) .. 1 (far).
    :param spacing: pixel size in mm, a number or (row, column) = (y, x).
    :param depth_range_mm: physical depth of relative depth 1.
    :param depth_tolerance: largest relative depth difference of two ends that may be re-linked.
    :param smoothing: half width (points) of the moving averages along each segment.
    :param min_points: shortest segment kept (pixels).
    :param link_radius_px: farthest two segment ends re-linked across one junction region (pixels).
    :param max_radius_mm: cap of the tube radius (mm).
    """
    reporter = as_reporter(progress, cancel)
    mask = np.asarray(vessel_mask) > 0.5 if np.asarray(vessel_mask).dtype != bool else np.asarray(vessel_mask)
    sy, sx = (spacing, spacing) if np.isscalar(spacing) else spacing
    reporter(0.0, "skeletonising")
    cut = depth_steps(mask, depth, depth_tolerance)
    skeleton = skeletonize(mask & ~cut)
    segments, removed, junctions = split_at_junctions(skeleton)
    reporter(0.3, "ordering segments")
    pixels, offsets = order_segments(segments, min_points)
    near = ndimage.binary_dilation(removed | cut, EIGHT, iterations=3)
    distance = ndimage.distance_transform_edt(mask, sampling=(sy, sx))
    pixels, offsets = prune_spurs(pixels, offsets, near, distance / min(sx, sy))
    reporter(0.6, "lifting to 3D")
    smooth = segment_moving_average(pixels.astype(float), offsets, smoothing)
    rel_depth = ndimage.map_coordinates(np.asarray(depth, np.float32), smooth.T, order=1, mode="nearest")
    rel_depth = segment_moving_average(rel_depth, offsets, smoothing)
    radii = np.maximum(ndimage.map_coordinates(distance, smooth.T, order=1) - 0.5 * min(sx, sy), 0.5 * min(sx, sy))
    radii = np.minimum(radii, max(max_radius_mm, 0.5 * min(sx, sy)))
    points = np.c_[smooth[:, 1] * sx, smooth[:, 0] * sy, rel_depth * depth_range_mm]
    reporter(0.8, "re-linking at junctions")
    ends, _ = _end_tangents(points, offsets)
    clusters = ndimage.label(near, EIGHT)[0]
    end_cluster = clusters[pixels[ends, 0], pixels[ends, 1]] if len(ends) else np.zeros(0, int)
    links = link_ends(points, offsets, end_cluster, link_radius_px * max(sx, sy), depth_tolerance * depth_range_mm,
                      radii)
    points, radii, offsets, links = merge_continuations(points, radii, offsets, links)
    network = _with_bridges(points, radii, offsets, links)
    network.junctions, network.spacing, network.depth_range_mm = junctions, (sy, sx), depth_range_mm
    network.skeleton = skeleton
    reporter(1.0, f"{network.segment_count} segments, {network.link_count} links")
    return network


def merge_continuations(points: np.ndarray, radii: np.ndarray, offsets: np.ndarray,
                        links: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Join segments whose ends are linked one-to-one into continuous polylines.

    A link whose two end points take part in no other link is a continuation (a vessel cut at a
    crossing or a depth step); the chain of segments it joins becomes one polyline. Links at an end
    with several links (branchings) are kept, re-indexed into the merged points.

    :returns: merged points, radii, offsets, and the remaining links (point index pairs).
    """
    if len(links) == 0:
        return points, radii, offsets, links
    segment_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    ends, counts = np.unique(links.ravel(), return_counts=True)
    degree = dict(zip(ends.tolist(), counts.tolist()))
    partner = {}
    for a, b in links.tolist():
        if degree[a] == 1 and degree[b] == 1:
            partner[a], partner[b] = b, a
    kept = np.array([pair for pair in links.tolist() if pair[0] not in partner], int).reshape(-1, 2)
    starts, stops = offsets[:-1], offsets[1:] - 1
    visited = np.zeros(len(starts), bool)
    order, new_index = [], np.empty(len(points), np.int64)
    new_offsets = [0]

    def walk(segment: int, first_end: int) -> None:
        while True:
            visited[segment] = True
            forward = first_end == starts[segment]
            span = np.arange(starts[segment], stops[segment] + 1)
            span = span if forward else span[::-1]
            new_index[span] = len(order) + np.arange(len(span))
            order.extend(span.tolist())
            last = span[-1]
            nxt = partner.get(int(last))
            if nxt is None or visited[segment_of[nxt]]:
                return
            segment, first_end = int(segment_of[nxt]), nxt

    # chains from their free ends first, then closed rings of continuations
    for segment in range(len(starts)):
        if visited[segment]:
            continue
        start_free, stop_free = int(starts[segment]) not in partner, int(stops[segment]) not in partner
        if start_free or stop_free:
            walk(segment, int(starts[segment]) if start_free else int(stops[segment]))
            new_offsets.append(len(order))
    for segment in range(len(starts)):
        if not visited[segment]:
            walk(segment, int(starts[segment]))
            new_offsets.append(len(order))
    order = np.asarray(order, np.int64)
    return points[order], radii[order], np.asarray(new_offsets), new_index[kept] if len(kept) else kept


def _with_bridges(points, radii, offsets, links) -> VesselNetwork3D:
    """Append each link as a two-point polyline."""
    bridge_points = points[links.ravel()]
    bridge_radii = radii[links.ravel()]
    all_offsets = np.r_[offsets, offsets[-1] + 2 * np.arange(1, len(links) + 1)]
    bridge = np.r_[np.zeros(len(offsets) - 1, bool), np.ones(len(links), bool)]
    return VesselNetwork3D(points=np.concatenate([points, bridge_points]),
                           radii=np.concatenate([radii, bridge_radii]), offsets=all_offsets, bridge=bridge)


# ------------------------------------------------------------------ placement, mesh, measures


def to_ras(points: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    """Image-frame mm points into RAS: (x, y) through the image's IJK-to-RAS, depth along ``-K``.

    Deeper vessels lie further from the viewer who looks at the slab from the ``+K`` side.
    """
    matrix = np.asarray(ijk_to_ras, float)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    ijk = np.c_[points[:, 0] / spacing[0], points[:, 1] / spacing[1], np.zeros(len(points))]
    k_axis = matrix[:3, 2] / spacing[2]
    return ijk @ matrix[:3, :3].T + matrix[:3, 3] - points[:, 2:3] * k_axis


def image_frame_matrix(spacing: tuple[float, float]) -> np.ndarray:
    """IJK-to-RAS of the image frame itself (x = column mm, y = row mm, depth along -z)."""
    sy, sx = spacing
    return np.diag([sx, sy, 1.0, 1.0])


def tube_mesh(network: VesselNetwork3D, ijk_to_ras: np.ndarray | None = None, sides: int = 10):
    """Closed tubes, one ``vtkTubeFilter`` sweep over all polylines (:func:`meshes.tube`); point arrays
    ``radius`` and ``depth`` (mm).

    :param ijk_to_ras: places the tubes in a scene (see :func:`to_ras`); image frame when omitted.
    """
    from .. import meshes

    points = network.points if ijk_to_ras is None else to_ras(network.points, ijk_to_ras)
    return meshes.tube(points, network.radii, sides=sides, point_arrays={"depth": network.depth_mm},
                       offsets=network.offsets)


def depth_band_rows(network: VesselNetwork3D, bands: int = 4) -> list[dict]:
    """Vessel length (mm), segment count and mean depth per depth band, plus an ``all`` row.

    Lengths are summed per polyline edge by the edge's mean depth; a segment counts in the band of
    its mean depth. Bridges add length but are not counted as segments. An empty band's mean depth is NaN.
    """
    edges = np.ones(len(network.points), bool)
    edges[network.offsets[1:] - 1] = False
    start = np.flatnonzero(edges)
    step = network.points[start + 1] - network.points[start]
    length = np.linalg.norm(step, axis=1)
    edge_depth = 0.5 * (network.points[start, 2] + network.points[start + 1, 2])
    limits = np.linspace(0.0, network.depth_range_mm, bands + 1)
    edge_band = np.clip(np.searchsorted(limits, edge_depth, side="right") - 1, 0, bands - 1)
    seg_ids = network.segment_ids()
    vessel = ~network.bridge
    seg_depth = np.bincount(seg_ids, network.points[:, 2], len(vessel)) / np.maximum(np.bincount(seg_ids, minlength=len(vessel)), 1)
    seg_band = np.clip(np.searchsorted(limits, seg_depth, side="right") - 1, 0, bands - 1)
    rows = []
    for band in range(bands):
        in_band = edge_band == band
        rows.append({"band": f"{limits[band]:.3f}-{limits[band + 1]:.3f} mm", "depth_from_mm": limits[band],
                     "depth_to_mm": limits[band + 1], "length_mm": float(length[in_band].sum()),
                     "segments": int((vessel & (seg_band == band)).sum()),
                     "mean_depth_mm": float(edge_depth[in_band].mean()) if in_band.any() else float("nan")})
    total = float(length.sum())
    rows.append({"band": "all", "depth_from_mm": 0.0, "depth_to_mm": network.depth_range_mm,
                 "length_mm": total, "segments": network.segment_count,
                 "mean_depth_mm": float((edge_depth * length).sum() / total) if total > 0 else 0.0})
    return rows
