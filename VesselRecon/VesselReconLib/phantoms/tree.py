"""Synthetic 3D vascular trees: representation, growth and post-hoc edits.

Growth follows the *space colonisation* algorithm (Runions, Lane & Prusinkiewicz, "Modeling
trees with a space colonization algorithm", Eurographics NPH 2007; 2D original: Runions et al.,
"Modeling and visualization of leaf venation patterns", SIGGRAPH 2005):

1. attractor points are sampled inside a domain (box, ellipsoid, slab or a boolean mask);
2. every iteration each live attractor is associated with its nearest tree node within the
   *influence distance*; every node with at least one attractor grows a new node one *step*
   towards the normalised mean of the unit vectors to its attractors;
3. attractors closer than the *kill distance* to any node are removed;
4. repeat until no attractor is left or nothing grows.

Roots are supplied by the caller (position, direction, radius). A root whose neighbourhood holds
no attractor first grows straight along its direction ("trunk") until it reaches the attractor
cloud.

Radii follow Murray's law ``r_parent**gamma == sum(r_child**gamma)`` (Murray 1926, ``gamma = 3``
by default, configurable): every leaf gets the same terminal radius, radii are accumulated from
the leaves up (so the law holds *exactly* at every bifurcation and radii are constant along a
segment) and scaled per root so that the root has the requested radius. Because Murray's law
then fixes ``r_leaf = r_root / n_leaves**(1/gamma)``, ``TreeParams.min_radius`` is honoured by
pruning the shortest terminal branches until ``n_leaves <= (r_root / min_radius)**gamma``.

Coordinates are plain world millimetres (the tree is RAS/LPS agnostic); see
:mod:`VesselReconLib.phantoms.geometry` for voxel conversions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = [
    "VascularTree",
    "TreeParams",
    "Root",
    "BoxDomain",
    "EllipsoidDomain",
    "SlabDomain",
    "MaskDomain",
    "grow_tree",
    "apply_murray_radii",
    "node_path",
    "add_stenosis",
    "add_kissing_vessel",
    "add_crossing_vessel",
    "merge_trees",
]


# --------------------------------------------------------------------------------------------
# Representation
# --------------------------------------------------------------------------------------------


@dataclass
class VascularTree:
    """A forest of vessel trees as a node/edge graph in world millimetres.

    Attributes:
        nodes: ``(N, 3)`` float64 node centre positions (mm, world x, y, z).
        radii: ``(N,)`` float64 vessel radius at each node (mm). The vessel between two connected
            nodes is the *round cone* (convex hull of the two node spheres, radius linearly
            interpolated along the axis).
        edges: ``(E, 2)`` int64 ``(parent, child)`` node indices. Every node has at most one parent;
            nodes without a parent are roots.
        labels: optional ``(N,)`` int32 per-node label (grown trees: the root's label, default
            ``root index + 1``; e.g. 1 = artery, 2 = vein when the caller says so).
        generation: optional ``(N,)`` int32 branching order (0 on the root trunk, +1 for every side
            branch taken on the way from the root).
        meta: JSON-safe dict (growth parameters, recorded stenoses/crossings, ...).
    """

    nodes: np.ndarray
    radii: np.ndarray
    edges: np.ndarray
    labels: np.ndarray | None = None
    generation: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.nodes = np.asarray(self.nodes, dtype=np.float64).reshape(-1, 3)
        self.radii = np.asarray(self.radii, dtype=np.float64).reshape(-1)
        self.edges = np.asarray(self.edges, dtype=np.int64).reshape(-1, 2)
        n = len(self.nodes)
        if self.radii.shape != (n,):
            raise ValueError(f"radii must have shape ({n},), got {self.radii.shape}")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int32).reshape(-1)
            if self.labels.shape != (n,):
                raise ValueError("labels must have one entry per node")
        if self.generation is not None:
            self.generation = np.asarray(self.generation, dtype=np.int32).reshape(-1)
            if self.generation.shape != (n,):
                raise ValueError("generation must have one entry per node")
        if len(self.edges) and (self.edges.min() < 0 or self.edges.max() >= n):
            raise ValueError("edge index out of range")
        if len(self.edges) and len(np.unique(self.edges[:, 1])) != len(self.edges):
            raise ValueError("a node has more than one parent")

    # -- basic topology ---------------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    def parents(self) -> np.ndarray:
        """``(N,)`` parent index of every node, ``-1`` for roots."""
        p = np.full(self.n_nodes, -1, dtype=np.int64)
        if self.n_edges:
            p[self.edges[:, 1]] = self.edges[:, 0]
        return p

    def n_children(self) -> np.ndarray:
        """``(N,)`` number of children of every node."""
        return np.bincount(self.edges[:, 0], minlength=self.n_nodes) if self.n_edges else np.zeros(self.n_nodes, np.int64)

    def children(self) -> list[list[int]]:
        """Children lists, in edge order."""
        ch: list[list[int]] = [[] for _ in range(self.n_nodes)]
        for p, c in self.edges.tolist():
            ch[p].append(c)
        return ch

    def roots(self) -> np.ndarray:
        """Indices of nodes without a parent."""
        return np.flatnonzero(self.parents() < 0)

    def branch_points(self) -> np.ndarray:
        """Indices of nodes with two or more children (bifurcations, trifurcations)."""
        return np.flatnonzero(self.n_children() >= 2)

    def leaves(self) -> np.ndarray:
        """Indices of nodes without children that have a parent (vessel end points)."""
        return np.flatnonzero((self.n_children() == 0) & (self.parents() >= 0))

    def topological_order(self) -> np.ndarray:
        """Node indices ordered so that every parent precedes its children."""
        ch = self.children()
        order: list[int] = []
        stack = list(self.roots()[::-1])
        while stack:
            v = stack.pop()
            order.append(int(v))
            stack.extend(reversed(ch[v]))
        if len(order) != self.n_nodes:
            raise ValueError("tree graph contains a cycle")
        return np.asarray(order, dtype=np.int64)

    def segments(self) -> list[np.ndarray]:
        """Node-index polylines between roots/branch points and branch points/leaves.

        Each segment starts at a root or branch point and follows single-child nodes until a
        leaf or the next branch point (both ends included), so every edge belongs to exactly one
        segment. An isolated node (a root without children) is returned as a one-node segment.
        """
        ch = self.children()
        nch = np.array([len(c) for c in ch], dtype=np.int64)
        starts = np.union1d(self.roots(), np.flatnonzero(nch >= 2))
        segs: list[np.ndarray] = []
        for s in starts.tolist():
            if not ch[s]:
                segs.append(np.array([s], dtype=np.int64))
                continue
            for c in ch[s]:
                path = [s, c]
                while len(ch[c]) == 1:
                    c = ch[c][0]
                    path.append(c)
                segs.append(np.asarray(path, dtype=np.int64))
        return segs

    # -- geometry ---------------------------------------------------------------------------
    def edge_lengths(self) -> np.ndarray:
        if not self.n_edges:
            return np.zeros(0)
        d = self.nodes[self.edges[:, 1]] - self.nodes[self.edges[:, 0]]
        return np.sqrt((d * d).sum(1))

    def total_length(self) -> float:
        """Sum of centreline edge lengths (mm)."""
        return float(self.edge_lengths().sum())

    def bounds(self, include_radius: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)`` world-axis-aligned bounding box (mm), including the vessel radius."""
        if not self.n_nodes:
            z = np.zeros(3)
            return z, z.copy()
        r = self.radii[:, None] if include_radius else 0.0
        return (self.nodes - r).min(0), (self.nodes + r).max(0)

    def volume_estimate(self) -> float:
        """Sum of the round-cone (frustum) volumes of all edges, ignoring overlaps (mm^3)."""
        if not self.n_edges:
            return 0.0
        r1 = self.radii[self.edges[:, 0]]
        r2 = self.radii[self.edges[:, 1]]
        return float((math.pi / 3.0 * self.edge_lengths() * (r1 * r1 + r1 * r2 + r2 * r2)).sum())

    def copy(self) -> "VascularTree":
        import copy as _copy

        return VascularTree(
            self.nodes.copy(),
            self.radii.copy(),
            self.edges.copy(),
            None if self.labels is None else self.labels.copy(),
            None if self.generation is None else self.generation.copy(),
            _copy.deepcopy(self.meta),
        )

    def transform(self, matrix: Sequence[Sequence[float]] | np.ndarray) -> "VascularTree":
        """Return a copy with node positions mapped by a 4x4 homogeneous matrix.

        Radii are multiplied by ``|det(A)|**(1/3)`` of the linear part ``A`` (exact for rigid and
        uniformly scaled transforms; an average for anisotropic scalings).
        """
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape != (4, 4):
            raise ValueError("matrix must be 4x4")
        out = self.copy()
        out.nodes = self.nodes @ m[:3, :3].T + m[:3, 3]
        out.radii = self.radii * abs(np.linalg.det(m[:3, :3])) ** (1.0 / 3.0)
        return out

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-safe dict (lists of floats/ints)."""
        return {
            "format": "VesselRecon.VascularTree",
            "version": 1,
            "nodes": self.nodes.tolist(),
            "radii": self.radii.tolist(),
            "edges": self.edges.tolist(),
            "labels": None if self.labels is None else self.labels.tolist(),
            "generation": None if self.generation is None else self.generation.tolist(),
            "meta": _json_safe(self.meta),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "VascularTree":
        return cls(
            np.asarray(d["nodes"], dtype=np.float64).reshape(-1, 3),
            np.asarray(d["radii"], dtype=np.float64),
            np.asarray(d.get("edges", []), dtype=np.int64).reshape(-1, 2),
            None if d.get("labels") is None else np.asarray(d["labels"]),
            None if d.get("generation") is None else np.asarray(d["generation"]),
            dict(d.get("meta") or {}),
        )

    # -- editing helpers --------------------------------------------------------------------
    def subset(self, keep: np.ndarray) -> "VascularTree":
        """Copy restricted to the nodes where the boolean ``keep`` is true (edges re-indexed)."""
        keep = np.asarray(keep, dtype=bool)
        new_index = np.full(self.n_nodes, -1, dtype=np.int64)
        new_index[keep] = np.arange(int(keep.sum()))
        e = self.edges
        e = e[keep[e[:, 0]] & keep[e[:, 1]]] if len(e) else e
        import copy as _copy

        return VascularTree(
            self.nodes[keep],
            self.radii[keep],
            new_index[e],
            None if self.labels is None else self.labels[keep],
            None if self.generation is None else self.generation[keep],
            _copy.deepcopy(self.meta),
        )

    def subdivide_edge(self, parent: int, child: int, fractions: Sequence[float]) -> list[int]:
        """Insert nodes on edge ``parent->child`` at the given fractions in (0, 1), in place.

        Positions and radii are linearly interpolated (the round-cone geometry is unchanged).
        Returns the new node indices ordered from parent to child.
        """
        hit = np.flatnonzero((self.edges[:, 0] == parent) & (self.edges[:, 1] == child))
        if not len(hit):
            raise ValueError(f"no edge {parent}->{child}")
        f = np.sort(np.asarray(list(fractions), dtype=np.float64))
        f = f[(f > 0) & (f < 1)]
        if not len(f):
            return []
        a, b = self.nodes[parent], self.nodes[child]
        ra, rb = self.radii[parent], self.radii[child]
        n0 = self.n_nodes
        new = list(range(n0, n0 + len(f)))
        self.nodes = np.vstack([self.nodes, a + f[:, None] * (b - a)])
        self.radii = np.concatenate([self.radii, ra + f * (rb - ra)])
        if self.labels is not None:
            self.labels = np.concatenate([self.labels, np.full(len(f), self.labels[child], np.int32)])
        if self.generation is not None:
            self.generation = np.concatenate(
                [self.generation, np.full(len(f), self.generation[child], np.int32)]
            )
        chain = [parent] + new + [child]
        new_edges = np.array([[chain[i], chain[i + 1]] for i in range(len(chain) - 1)], dtype=np.int64)
        self.edges = np.vstack([np.delete(self.edges, hit[0], axis=0), new_edges])
        return new


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def merge_trees(*trees: VascularTree) -> VascularTree:
    """Concatenate trees into one forest (node indices of later trees are shifted)."""
    nodes, radii, edges, labels, gens = [], [], [], [], []
    off = 0
    meta: dict = {}
    for t in trees:
        nodes.append(t.nodes)
        radii.append(t.radii)
        edges.append(t.edges + off)
        labels.append(t.labels if t.labels is not None else np.ones(t.n_nodes, np.int32))
        gens.append(t.generation if t.generation is not None else np.zeros(t.n_nodes, np.int32))
        off += t.n_nodes
        for k, v in t.meta.items():
            if isinstance(v, list):
                meta.setdefault(k, []).extend(v)
            else:
                meta.setdefault(k, v)
    return VascularTree(
        np.vstack(nodes) if nodes else np.zeros((0, 3)),
        np.concatenate(radii) if radii else np.zeros(0),
        np.vstack(edges) if edges else np.zeros((0, 2), np.int64),
        np.concatenate(labels) if labels else None,
        np.concatenate(gens) if gens else None,
        meta,
    )


# --------------------------------------------------------------------------------------------
# Domains (attractor sampling)
# --------------------------------------------------------------------------------------------


@dataclass
class BoxDomain:
    """Axis-aligned box ``[lo, hi]`` (mm)."""

    lo: Sequence[float]
    hi: Sequence[float]

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        lo, hi = np.asarray(self.lo, float), np.asarray(self.hi, float)
        return lo + rng.random((n, 3)) * (hi - lo)

    def contains(self, p: np.ndarray) -> np.ndarray:
        p = np.atleast_2d(p)
        return np.all((p >= np.asarray(self.lo)) & (p <= np.asarray(self.hi)), axis=1)


@dataclass
class EllipsoidDomain:
    """Axis-aligned ellipsoid with ``center`` and semi-axes ``radii`` (mm)."""

    center: Sequence[float]
    radii: Sequence[float]

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        v = rng.normal(size=(n, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-300
        v *= rng.random((n, 1)) ** (1.0 / 3.0)
        return np.asarray(self.center, float) + v * np.asarray(self.radii, float)

    def contains(self, p: np.ndarray) -> np.ndarray:
        q = (np.atleast_2d(p) - np.asarray(self.center, float)) / np.asarray(self.radii, float)
        return (q * q).sum(1) <= 1.0


@dataclass
class SlabDomain:
    """Thin slab (e.g. a retinal vascular layer): ``size`` (w, h) in-plane, ``thickness`` along
    ``normal``; ``shape`` ``"rect"`` or ``"disk"`` (then ``size[0]`` is the diameter).

    The in-plane axes are world x/y for the default normal ``(0, 0, 1)``.
    """

    center: Sequence[float]
    size: Sequence[float]
    thickness: float
    normal: Sequence[float] = (0.0, 0.0, 1.0)
    shape: str = "rect"

    def _frame(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = np.asarray(self.normal, float)
        n = n / np.linalg.norm(n)
        helper = np.array([1.0, 0, 0]) if abs(n[0]) < 0.9 else np.array([0, 1.0, 0])
        u = helper - n * (helper @ n)
        u /= np.linalg.norm(u)
        return u, np.cross(n, u), n

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        u, v, w = self._frame()
        if self.shape == "disk":
            rad = 0.5 * float(self.size[0]) * np.sqrt(rng.random(n))
            ang = rng.random(n) * 2 * np.pi
            a, b = rad * np.cos(ang), rad * np.sin(ang)
        else:
            a = (rng.random(n) - 0.5) * float(self.size[0])
            b = (rng.random(n) - 0.5) * float(self.size[1])
        c = (rng.random(n) - 0.5) * float(self.thickness)
        return np.asarray(self.center, float) + a[:, None] * u + b[:, None] * v + c[:, None] * w

    def contains(self, p: np.ndarray) -> np.ndarray:
        u, v, w = self._frame()
        q = np.atleast_2d(p) - np.asarray(self.center, float)
        a, b, c = q @ u, q @ v, q @ w
        ok = np.abs(c) <= 0.5 * self.thickness
        if self.shape == "disk":
            return ok & (a * a + b * b <= (0.5 * self.size[0]) ** 2)
        return ok & (np.abs(a) <= 0.5 * self.size[0]) & (np.abs(b) <= 0.5 * self.size[1])


@dataclass
class MaskDomain:
    """Boolean voxel mask indexed ``[k, j, i]`` with ``spacing`` (sx, sy, sz) and ``origin`` (mm).

    Voxel ``[k, j, i]`` has its centre at ``origin + (i*sx, j*sy, k*sz)``; samples are uniform
    inside the voxels that are true.
    """

    mask: np.ndarray
    spacing: Sequence[float] = (1.0, 1.0, 1.0)
    origin: Sequence[float] = (0.0, 0.0, 0.0)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        m = np.asarray(self.mask, dtype=bool)
        flat = np.flatnonzero(m)
        if not len(flat):
            raise ValueError("MaskDomain mask is empty")
        pick = flat[rng.integers(0, len(flat), n)]
        k, j, i = np.unravel_index(pick, m.shape)
        ijk = np.stack([i, j, k], 1).astype(np.float64) + rng.random((n, 3)) - 0.5
        return np.asarray(self.origin, float) + ijk * np.asarray(self.spacing, float)

    def contains(self, p: np.ndarray) -> np.ndarray:
        m = np.asarray(self.mask, dtype=bool)
        ijk = np.rint((np.atleast_2d(p) - np.asarray(self.origin, float)) / np.asarray(self.spacing, float)).astype(np.int64)
        i, j, k = ijk[:, 0], ijk[:, 1], ijk[:, 2]
        ok = (i >= 0) & (j >= 0) & (k >= 0) & (i < m.shape[2]) & (j < m.shape[1]) & (k < m.shape[0])
        out = np.zeros(len(ijk), bool)
        out[ok] = m[k[ok], j[ok], i[ok]]
        return out


def _as_domain(domain: Any):
    if hasattr(domain, "sample"):
        return domain
    if isinstance(domain, dict):
        kind = domain.get("type", "box")
        kw = {k: v for k, v in domain.items() if k != "type"}
        return {"box": BoxDomain, "ellipsoid": EllipsoidDomain, "slab": SlabDomain, "mask": MaskDomain}[kind](**kw)
    if isinstance(domain, (tuple, list)) and len(domain) == 2:
        return BoxDomain(domain[0], domain[1])
    raise TypeError(f"unsupported domain {domain!r}")


# --------------------------------------------------------------------------------------------
# Growth
# --------------------------------------------------------------------------------------------


@dataclass
class Root:
    """A vessel inlet: ``position`` (mm), initial ``direction``, ``radius`` (mm), node ``label``."""

    position: Sequence[float]
    direction: Sequence[float] = (0.0, 0.0, 1.0)
    radius: float | None = None
    label: int | None = None


@dataclass
class TreeParams:
    """Space-colonisation growth controls (lengths in mm).

    Attributes:
        n_attractors: attractor points sampled in the domain.
        step_mm: node spacing / growth step ``D``.
        influence_mm: attractor influence radius ``d_i``.
        kill_mm: attractor kill distance ``d_k`` (< influence).
        max_generations: maximum branching order (side branches on a root-to-leaf path).
        max_children: maximum children per node (2 = bifurcations only).
        branch_angle_deg, branch_angle_bias: a new side branch's angle to the existing child is
            blended towards ``branch_angle_deg`` with weight ``bias`` in [0, 1] (0 = pure
            space colonisation).
        min_branch_angle_deg: side branches closer than this to the existing child are refused.
        inertia: weight of the incoming direction added to the attraction direction (smoothness).
        tortuosity: amplitude (fraction of a step) of a random direction perturbation
            perpendicular to the growth direction; ``tortuosity_smoothing`` in [0, 1) is the AR(1)
            correlation of that perturbation between consecutive steps (smooth wiggles).
        gamma: Murray exponent.
        root_radius: radius of roots that do not specify one.
        min_radius: smallest allowed radius (terminal vessels); enforced by pruning when
            ``enforce_min_radius``.
        min_terminal_mm: terminal twigs shorter than this are pruned (0 disables).
        max_iterations: growth iteration cap.
        max_trunk_mm: how far a root may grow straight before reaching attractors
            (default: the domain sample's bounding-box diagonal).
        seed: RNG seed (``numpy.random.default_rng``); the result is a pure function of the
            parameters, domain and roots.
    """

    n_attractors: int = 2000
    step_mm: float = 1.0
    influence_mm: float = 12.0
    kill_mm: float = 2.0
    max_generations: int = 20
    max_children: int = 2
    branch_angle_deg: float = 45.0
    branch_angle_bias: float = 0.0
    min_branch_angle_deg: float = 15.0
    inertia: float = 0.3
    tortuosity: float = 0.0
    tortuosity_smoothing: float = 0.8
    gamma: float = 3.0
    root_radius: float = 1.5
    min_radius: float = 0.3
    enforce_min_radius: bool = True
    min_terminal_mm: float = 2.0
    max_iterations: int = 5000
    max_trunk_mm: float | None = None
    seed: int = 0

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return _json_safe(asdict(self))


def _as_root(r: Any) -> Root:
    if isinstance(r, Root):
        return r
    if isinstance(r, dict):
        return Root(**r)
    r = tuple(r)
    return Root(*r)


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.sqrt((v * v).sum(-1, keepdims=True))
    return v / np.where(n > 1e-12, n, 1.0)


def _perp_unit(d: np.ndarray) -> np.ndarray:
    """A unit vector perpendicular to each row of ``d`` (deterministic)."""
    helper = np.where(np.abs(d[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    return _unit(np.cross(d, helper))


class _Grower:
    def __init__(self, cap: int):
        self.n = 0
        self.pos = np.zeros((cap, 3))
        self.dir = np.zeros((cap, 3))
        self.noise = np.zeros((cap, 3))
        self.child_dir = np.zeros((cap, 3))
        self.parent = np.full(cap, -1, np.int64)
        self.nchild = np.zeros(cap, np.int64)
        self.gen = np.zeros(cap, np.int64)
        self.root = np.zeros(cap, np.int64)

    def _ensure(self, extra: int):
        cap = len(self.parent)
        if self.n + extra <= cap:
            return
        new = max(2 * cap, self.n + extra)
        for name in ("pos", "dir", "noise", "child_dir", "parent", "nchild", "gen", "root"):
            a = getattr(self, name)
            b = np.zeros((new,) + a.shape[1:], a.dtype)
            if name == "parent":
                b[:] = -1
            b[: len(a)] = a
            setattr(self, name, b)

    def add(self, pos, direction, noise, parent, gen, root) -> np.ndarray:
        m = len(pos)
        self._ensure(m)
        idx = np.arange(self.n, self.n + m)
        self.pos[idx] = pos
        self.dir[idx] = direction
        self.noise[idx] = noise
        self.parent[idx] = parent
        self.gen[idx] = gen
        self.root[idx] = root
        has_parent = parent >= 0
        if has_parent.any():
            p = parent[has_parent]
            first = self.nchild[p] == 0
            self.child_dir[p[first]] = direction[has_parent][first]
            np.add.at(self.nchild, p, 1)
        self.n += m
        return idx


def grow_tree(
    domain: Any,
    roots: Iterable[Any],
    params: TreeParams | None = None,
    attractors: np.ndarray | None = None,
) -> VascularTree:
    """Grow a vascular forest by space colonisation and assign Murray's-law radii.

    Args:
        domain: a domain object with ``sample(n, rng)`` (:class:`BoxDomain`,
            :class:`EllipsoidDomain`, :class:`SlabDomain`, :class:`MaskDomain`), a ``(lo, hi)`` pair
            (box) or a dict ``{"type": "box"|"ellipsoid"|"slab"|"mask", ...}``.
        roots: :class:`Root` objects, dicts or ``(position, direction, radius[, label])`` tuples.
        params: :class:`TreeParams` (defaults if omitted).
        attractors: optional explicit ``(M, 3)`` attractor points (then ``domain`` may be None).

    Returns:
        a :class:`VascularTree` with ``labels`` (root label) and ``generation`` (branching order).
    """
    from scipy.spatial import cKDTree

    p = params or TreeParams()
    rng = np.random.default_rng(p.seed)
    roots = [_as_root(r) for r in roots]
    if not roots:
        raise ValueError("at least one root is required")
    if attractors is None:
        attr = np.asarray(_as_domain(domain).sample(int(p.n_attractors), rng), dtype=np.float64)
    else:
        attr = np.asarray(attractors, dtype=np.float64).reshape(-1, 3)
    D, di, dk = float(p.step_mm), float(p.influence_mm), float(p.kill_mm)
    if not (0 < dk < di) or D <= 0:
        raise ValueError("need 0 < kill_mm < influence_mm and step_mm > 0")

    pts_all = np.vstack([attr, np.array([r.position for r in roots], float)])
    diag = float(np.linalg.norm(pts_all.max(0) - pts_all.min(0))) if len(pts_all) else 1.0
    max_trunk = float(p.max_trunk_mm) if p.max_trunk_mm is not None else max(diag, 10 * D)
    cos_min = math.cos(math.radians(p.min_branch_angle_deg))
    smooth = float(np.clip(p.tortuosity_smoothing, 0.0, 0.999))

    g = _Grower(max(1024, 8 * len(roots)))
    rpos = np.array([r.position for r in roots], float)
    rdir = _unit(np.array([r.direction for r in roots], float))
    g.add(rpos, rdir, np.zeros_like(rpos), np.full(len(roots), -1), np.zeros(len(roots), np.int64), np.arange(len(roots)))

    atree = cKDTree(attr) if len(attr) else None
    alive = np.ones(len(attr), bool)
    near_d = np.full(len(attr), np.inf)
    near_i = np.full(len(attr), -1, np.int64)
    influenced_root = np.zeros(len(roots), bool)
    trunk_len = np.zeros(len(roots))
    trunk_tip = np.arange(len(roots), dtype=np.int64)  # -1 once the root reached attractors

    def update_nearest(new_idx: np.ndarray):
        if atree is None or not len(new_idx):
            return
        lists = atree.query_ball_point(g.pos[new_idx], di, return_sorted=False)
        lens = np.fromiter((len(l) for l in lists), np.int64, len(lists))
        if not lens.sum():
            return
        a = np.concatenate([np.asarray(l, np.int64) for l in lists if len(l)])
        nd = np.repeat(new_idx, lens)
        diff = attr[a] - g.pos[nd]
        d = np.sqrt((diff * diff).sum(1))
        # per attractor minimum over this batch (ties -> lowest node index; deterministic)
        order = np.lexsort((nd, d, a))
        a, nd, d = a[order], nd[order], d[order]
        first = np.ones(len(a), bool)
        first[1:] = a[1:] != a[:-1]
        a, nd, d = a[first], nd[first], d[first]
        better = d < near_d[a]
        near_d[a[better]] = d[better]
        near_i[a[better]] = nd[better]

    update_nearest(np.arange(g.n))

    for _ in range(int(p.max_iterations)):
        alive &= ~(near_d < dk)
        act = alive & (near_i >= 0)
        new_pos, new_dir, new_gen = [], [], []

        if act.any():
            ai = near_i[act]
            v = _unit(attr[act] - g.pos[ai])
            grow_nodes, inv = np.unique(ai, return_inverse=True)
            s = np.zeros((len(grow_nodes), 3))
            np.add.at(s, inv, v)
            influenced_root[g.root[grow_nodes]] = True
            s_norm = np.sqrt((s * s).sum(1))
            base = g.dir[grow_nodes]
            d = np.where(s_norm[:, None] > 1e-9, s / np.maximum(s_norm, 1e-300)[:, None], base)
            d = _unit(d + p.inertia * base)
            ok = g.nchild[grow_nodes] < p.max_children
            side = g.nchild[grow_nodes] >= 1
            gen = g.gen[grow_nodes] + side.astype(np.int64)
            ok &= gen <= p.max_generations
            if side.any():
                cd = g.child_dir[grow_nodes]
                cosang = (d * cd).sum(1)
                if p.branch_angle_bias > 0:
                    ang = np.arccos(np.clip(cosang, -1, 1))
                    tgt = (1 - p.branch_angle_bias) * ang + p.branch_angle_bias * math.radians(p.branch_angle_deg)
                    w = d - cosang[:, None] * cd
                    w = np.where(np.linalg.norm(w, axis=1, keepdims=True) > 1e-9, _unit(w), _perp_unit(cd))
                    d_b = np.cos(tgt)[:, None] * cd + np.sin(tgt)[:, None] * w
                    d = np.where(side[:, None], d_b, d)
                    cosang = (d * cd).sum(1)
                ok &= ~side | (cosang < cos_min)
            if ok.any():
                gn = grow_nodes[ok]
                new_pos.append(gn)
                new_dir.append(d[ok])
                new_gen.append(gen[ok])
        # trunk growth of roots that have not reached the attractor cloud yet
        trunk_new = []
        for r in range(len(roots)):
            t = trunk_tip[r]
            if t < 0:
                continue
            if influenced_root[r] or trunk_len[r] >= max_trunk or (atree is not None and not alive.any()):
                trunk_tip[r] = -1
                continue
            trunk_new.append(t)
        if trunk_new:
            tn = np.asarray(trunk_new, np.int64)
            new_pos.append(tn)
            new_dir.append(g.dir[tn])
            new_gen.append(g.gen[tn])

        if not new_pos:
            break
        par = np.concatenate(new_pos)
        d = np.concatenate(new_dir)
        gen = np.concatenate(new_gen)
        # smoothed perpendicular perturbation (tortuosity)
        if p.tortuosity > 0:
            eps = rng.normal(size=(len(par), 3))
            nz = smooth * g.noise[par] + math.sqrt(1 - smooth * smooth) * eps
            nz_perp = nz - (nz * d).sum(1, keepdims=True) * d
            d = _unit(d + p.tortuosity * nz_perp)
        else:
            nz = np.zeros_like(d)
        pos = g.pos[par] + D * d
        idx = g.add(pos, d, nz, par, gen, g.root[par])
        for r in range(len(roots)):
            if trunk_tip[r] >= 0:
                m = par == trunk_tip[r]
                if m.any():
                    trunk_tip[r] = idx[np.flatnonzero(m)[0]]
                    trunk_len[r] += D
        update_nearest(idx)
        if atree is not None and not alive.any():
            break

    n = g.n
    parent = g.parent[:n].copy()
    keep = np.ones(n, bool)
    nchild = np.bincount(parent[parent >= 0], minlength=n)

    def terminal_segments() -> tuple[list[list[int]], np.ndarray]:
        segs, lens = [], []
        for leaf in np.flatnonzero(keep & (nchild == 0) & (parent >= 0)).tolist():
            path, L, c = [leaf], 0.0, leaf
            while parent[c] >= 0 and nchild[parent[c]] == 1 and parent[parent[c]] >= 0:
                L += D
                c = parent[c]
                path.append(c)
            L += D
            segs.append(path)
            lens.append(L)
        return segs, np.asarray(lens)

    def remove(path: list[int]):
        keep[path] = False
        nchild[parent[path[-1]]] -= 1

    # prune short terminal twigs (only those that hang off a branch point)
    if p.min_terminal_mm > 0:
        segs, lens = terminal_segments()
        for path, L in zip(segs, lens):
            top = parent[path[-1]]
            if L < p.min_terminal_mm and top >= 0 and nchild[top] >= 2:
                remove(path)

    rrad = np.array([p.root_radius if r.radius is None else float(r.radius) for r in roots])
    if p.enforce_min_radius and p.min_radius > 0:
        cap = np.floor((rrad / p.min_radius) ** p.gamma * (1 - 1e-12)).astype(np.int64)
        cap = np.maximum(cap, 1)
        root_of = g.root[:n]
        for _ in range(10000):
            leaves = np.flatnonzero(keep & (nchild == 0) & (parent >= 0))
            cnt = np.bincount(root_of[leaves], minlength=len(roots))
            excess = cnt - cap
            if (excess <= 0).all():
                break
            segs, lens = terminal_segments()
            order = np.argsort(lens, kind="stable")
            todo = excess.copy()
            used_top: set[int] = set()
            for k in order.tolist():
                path = segs[k]
                r = root_of[path[0]]
                top = parent[path[-1]]
                if todo[r] <= 0 or top < 0 or top in used_top or nchild[top] < 2:
                    continue
                used_top.add(int(top))
                remove(path)
                todo[r] -= 1
            if not used_top:
                break

    tree = VascularTree(
        g.pos[:n][keep],
        np.zeros(int(keep.sum())),
        np.zeros((0, 2), np.int64),
    )
    new_index = np.full(n, -1, np.int64)
    new_index[keep] = np.arange(int(keep.sum()))
    kids = np.flatnonzero(keep & (parent >= 0))
    tree.edges = np.stack([new_index[parent[kids]], new_index[kids]], 1).astype(np.int64)
    labels = np.array([(i + 1) if r.label is None else int(r.label) for i, r in enumerate(roots)], np.int32)
    tree.labels = labels[g.root[:n][keep]]
    tree.generation = g.gen[:n][keep].astype(np.int32)
    root_nodes = new_index[np.arange(len(roots))]
    tree = apply_murray_radii(tree, root_radius=dict(zip(root_nodes.tolist(), rrad.tolist())), gamma=p.gamma)
    tree.meta = {
        "generator": "space_colonisation",
        "params": p.to_dict(),
        "n_attractors_left": int(alive.sum()),
        "roots": [
            {"position": list(map(float, r.position)), "direction": list(map(float, r.direction)),
             "radius": float(rr), "label": int(lb), "node": int(rn)}
            for r, rr, lb, rn in zip(roots, rrad, labels, root_nodes)
        ],
        "stenoses": [],
        "crossings": [],
    }
    return tree


def apply_murray_radii(
    tree: VascularTree,
    root_radius: float | dict[int, float] | None = None,
    gamma: float = 3.0,
    leaf_weights: np.ndarray | None = None,
) -> VascularTree:
    """Return a copy whose radii obey Murray's law exactly at every branch point.

    Every leaf carries a flow weight (1 or ``leaf_weights[leaf]``), a node's weight is the sum of
    its children's, and ``r = c_root * weight**(1/gamma)`` with ``c_root`` chosen so each root has
    ``root_radius`` (a number, or ``{root_node: radius}``; default: its current radius). Radii are
    therefore constant along a segment and ``r_p**gamma == sum(r_c**gamma)`` at bifurcations.
    """
    out = tree.copy()
    n = out.n_nodes
    order = out.topological_order()
    parent = out.parents()
    nch = out.n_children()
    w = np.zeros(n)
    leaf = nch == 0
    w[leaf] = 1.0 if leaf_weights is None else np.asarray(leaf_weights, float)[leaf]
    par_list = parent.tolist()
    wl = w.tolist()
    for v in order[::-1].tolist():
        pv = par_list[v]
        if pv >= 0:
            wl[pv] += wl[v]
    w = np.asarray(wl)
    # propagate root id
    root_of = np.empty(n, np.int64)
    rl = root_of
    for v in order.tolist():
        pv = par_list[v]
        rl[v] = v if pv < 0 else rl[pv]
    roots = np.flatnonzero(parent < 0)
    c = np.zeros(n)
    for r in roots.tolist():
        if isinstance(root_radius, dict):
            R = float(root_radius.get(r, out.radii[r]))
        elif root_radius is None:
            R = float(out.radii[r])
        else:
            R = float(root_radius)
        c[r] = R / (w[r] ** (1.0 / gamma))
    out.radii = c[root_of] * w ** (1.0 / gamma)
    return out


# --------------------------------------------------------------------------------------------
# Post-hoc edits
# --------------------------------------------------------------------------------------------


def node_path(tree: VascularTree, a: int, b: int) -> np.ndarray:
    """Node indices of the tree path from node ``a`` to node ``b`` (both included)."""
    parent = tree.parents()

    def up(v):
        out = [v]
        while parent[v] >= 0:
            v = int(parent[v])
            out.append(v)
        return out

    pa, pb = up(int(a)), up(int(b))
    sb = {v: i for i, v in enumerate(pb)}
    for i, v in enumerate(pa):
        if v in sb:
            return np.asarray(pa[: i + 1] + pb[: sb[v]][::-1], dtype=np.int64)
    raise ValueError(f"nodes {a} and {b} are not connected")


def _resolve_path(tree: VascularTree, sel: Any) -> np.ndarray:
    if isinstance(sel, (int, np.integer)):
        return tree.segments()[int(sel)]
    sel = np.asarray(sel, dtype=np.int64).reshape(-1)
    if len(sel) == 2:
        return node_path(tree, int(sel[0]), int(sel[1]))
    parent = tree.parents()
    for u, v in zip(sel[:-1], sel[1:]):
        if parent[v] != u and parent[u] != v:
            raise ValueError(f"path nodes {u} and {v} are not connected by an edge")
    return sel


def add_stenosis(
    tree: VascularTree,
    edge_path_or_node_range: Any,
    percent_diameter: float,
    length_mm: float,
    center_fraction: float = 0.5,
    resolution_mm: float | None = None,
) -> VascularTree:
    """Return a copy with a focal stenosis of ``percent_diameter`` % on a path.

    Args:
        edge_path_or_node_range: a segment index (``tree.segments()[i]``), a ``(start, end)`` node
            pair (the tree path between them) or an explicit list of consecutive path nodes.
        percent_diameter: diameter reduction at the throat, e.g. 50 -> throat radius = 0.5 x the
            reference radius.
        length_mm: total stenosis length; the radius factor follows the smooth cosine profile
            ``1 - p * (1 + cos(2 pi (s - s0) / L)) / 2`` for ``|s - s0| < L/2``.
        center_fraction: throat position as a fraction of the path arc length.
        resolution_mm: node spacing inside the stenosis (default ``L / 16``); edges there are
            subdivided (geometry-preserving) so the profile is resolved and a node sits exactly at
            the throat.

    The reference radius is the (unmodified) radius interpolated at the throat. The record
    ``{"nodes", "throat_node", "center", "percent_diameter", "percent_area", "reference_radius",
    "min_radius", "length_mm"}`` is appended to ``meta["stenoses"]``; the minimum radius of the
    narrowed region equals ``(1 - p) * reference_radius`` exactly.
    """
    p = float(percent_diameter) / 100.0
    if not 0.0 <= p < 1.0:
        raise ValueError("percent_diameter must be in [0, 100)")
    L = float(length_mm)
    if L <= 0:
        raise ValueError("length_mm must be > 0")
    out = tree.copy()
    path = [int(v) for v in _resolve_path(out, edge_path_or_node_range)]
    if len(path) < 2:
        raise ValueError("stenosis path needs at least two nodes")
    res = float(resolution_mm) if resolution_mm else L / 16.0

    def arclen(pth):
        seg = np.linalg.norm(np.diff(out.nodes[pth], axis=0), axis=1)
        return np.concatenate([[0.0], np.cumsum(seg)])

    s = arclen(path)
    s0 = float(np.clip(center_fraction, 0, 1)) * s[-1]
    lo, hi = s0 - L / 2, s0 + L / 2
    parent = out.parents()
    # subdivide edges overlapping [lo, hi] and insert a node exactly at the throat
    new_path = [path[0]]
    for e in range(len(path) - 1):
        u, v = path[e], path[e + 1]
        s_u, s_v = s[e], s[e + 1]
        seg_len = s_v - s_u
        fr: list[float] = []
        if seg_len > 0 and s_v > lo and s_u < hi:
            a_ = max(lo, s_u)
            b_ = min(hi, s_v)
            nsub = max(1, int(math.ceil((b_ - a_) / res)))
            pts = np.linspace(a_, b_, nsub + 1)
            if s_u < s0 < s_v:
                pts = np.append(pts, s0)
            fr = sorted(set(float((x - s_u) / seg_len) for x in pts))
            fr = [f for f in fr if 1e-9 < f < 1 - 1e-9]
        if fr:
            if parent[v] == u:
                ins = out.subdivide_edge(u, v, fr)
            else:  # path runs child -> parent
                ins = out.subdivide_edge(v, u, [1 - f for f in fr])[::-1]
            parent = out.parents()
            new_path.extend(ins)
        new_path.append(v)
    path = new_path
    s = arclen(path)
    throat = int(path[int(np.argmin(np.abs(s - s0)))])
    r_ref = float(out.radii[throat])
    x = (s - s0) / L
    inside = np.abs(x) < 0.5
    factor = np.ones(len(path))
    factor[inside] = 1.0 - p * 0.5 * (1.0 + np.cos(2 * np.pi * x[inside]))
    # radius profile relative to the reference radius at the throat keeps the throat exact
    idx = np.asarray(path)
    out.radii[idx] = np.where(inside, out.radii[idx] * factor, out.radii[idx])
    out.radii[throat] = (1.0 - p) * r_ref
    rec = {
        "nodes": [int(v) for v in idx[inside]],
        "throat_node": throat,
        "center": out.nodes[throat].tolist(),
        "percent_diameter": 100.0 * p,
        "percent_area": 100.0 * (1.0 - (1.0 - p) ** 2),
        "reference_radius": r_ref,
        "min_radius": float(out.radii[idx[inside]].min()),
        "length_mm": L,
    }
    out.meta.setdefault("stenoses", []).append(rec)
    return out


def add_kissing_vessel(
    tree: VascularTree,
    node: int,
    gap_mm: float = 0.0,
    radius: float | None = None,
    length_mm: float = 20.0,
    angle_deg: float = 90.0,
    step_mm: float | None = None,
    label: int | None = None,
    seed: int = 0,
) -> VascularTree:
    """Add a straight vessel passing next to (or through) the vessel at ``node``.

    The new vessel is a separate root component, centred beside ``node`` at axis distance
    ``r_node + radius + gap_mm`` (``gap_mm = 0`` touching "kissing" vessels, ``> 0`` a narrow gap,
    ``< 0`` overlapping; ``gap_mm <= -(r_node + radius)`` passes right through, a crossing). Its
    direction makes ``angle_deg`` with the local vessel direction and is perpendicular to the
    offset, so the closest approach is exactly at the centre. The record ``{"node", "offset_mm",
    "gap_mm", "nodes", "angle_deg"}`` is appended to ``meta["crossings"]``.
    """
    out = tree.copy()
    rng = np.random.default_rng(seed)
    node = int(node)
    parent = out.parents()
    ch = out.children()
    if parent[node] >= 0:
        t = out.nodes[node] - out.nodes[parent[node]]
    elif ch[node]:
        t = out.nodes[ch[node][0]] - out.nodes[node]
    else:
        t = rng.normal(size=3)
    t = t / np.linalg.norm(t)
    r0 = float(out.radii[node])
    r = float(radius) if radius is not None else r0
    # offset direction: random unit vector perpendicular to the vessel
    o = rng.normal(size=3)
    o -= (o @ t) * t
    o /= np.linalg.norm(o)
    w = np.cross(t, o)  # perpendicular to both: the crossing vessel turns in the plane (t, w)
    a = math.radians(angle_deg)
    dvec = math.cos(a) * t + math.sin(a) * w
    dist = max(r0 + r + float(gap_mm), 0.0)
    center = out.nodes[node] + dist * o
    step = float(step_mm) if step_mm else max(min(r, 1.0), length_mm / 200.0)
    nseg = max(2, int(math.ceil(length_mm / step)))
    ts = np.linspace(-length_mm / 2, length_mm / 2, nseg + 1)
    if not np.any(np.isclose(ts, 0.0)):
        ts = np.sort(np.append(ts, 0.0))
    pts = center + ts[:, None] * dvec
    n0 = out.n_nodes
    new_idx = np.arange(n0, n0 + len(pts))
    lab = int(label) if label is not None else (int(out.labels.max()) + 1 if out.labels is not None and len(out.labels) else 1)
    out.nodes = np.vstack([out.nodes, pts])
    out.radii = np.concatenate([out.radii, np.full(len(pts), r)])
    out.edges = np.vstack([out.edges, np.stack([new_idx[:-1], new_idx[1:]], 1)])
    if out.labels is not None:
        out.labels = np.concatenate([out.labels, np.full(len(pts), lab, np.int32)])
    if out.generation is not None:
        out.generation = np.concatenate([out.generation, np.zeros(len(pts), np.int32)])
    out.meta.setdefault("crossings", []).append(
        {
            "node": node,
            "offset_mm": float(dist),
            "gap_mm": float(gap_mm),
            "radius": r,
            "angle_deg": float(angle_deg),
            "nodes": [int(new_idx[0]), int(new_idx[-1])],
            "closest_point": center.tolist(),
            "label": lab,
        }
    )
    return out


def add_crossing_vessel(tree: VascularTree, node: int, radius: float | None = None, length_mm: float = 20.0,
                        angle_deg: float = 90.0, seed: int = 0, **kw) -> VascularTree:
    """A vessel passing straight through the vessel at ``node`` (axes intersect): a crossing."""
    r0 = float(tree.radii[int(node)])
    r = float(radius) if radius is not None else r0
    return add_kissing_vessel(tree, node, gap_mm=-(r0 + r), radius=r, length_mm=length_mm,
                              angle_deg=angle_deg, seed=seed, **kw)
