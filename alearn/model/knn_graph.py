"""The k-nearest-neighbour graph of a pool sample, and label spreading over it.

:func:`graph_of` projects a sample of embeddings (standardised, first principal axes,
L2-normalised) and joins each item to its nearest ones by cosine similarity, exactly
(blocked matrix products); graphs are kept in memory by a hash of the sample, since a
sample's graph does not depend on the labels. :func:`spread_labels` spreads labels
over it (Zhou et al. 2004; the weights and normalisation of Iscen et al. 2019);
:func:`extend` scores new items from their neighbours in the sample.
:mod:`alearn.model.semi_supervised` builds the head on these.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import cg
from sklearn.decomposition import PCA

#: graphs kept in memory: hash of (sample, settings) -> Graph
_GRAPHS: OrderedDict[str, Graph] = OrderedDict()
_GRAPH_CACHE_SIZE = 2
_BLOCK = 2048
_DUPLICATE_SIMILARITY = 0.9999
_POWER = 3  # edge weight = similarity ** _POWER (Iscen et al. 2019)
_CG_ITERATIONS = 20


class Graph:
    """A sample's projection (``project``), its points ``Z`` and each point's nearest
    ``neighbours`` with their similarities ``sims``."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, pca: PCA, Z: np.ndarray,
                 neighbours: np.ndarray, sims: np.ndarray) -> None:
        self.mean, self.scale, self.pca, self.Z = mean, scale, pca, Z
        self.neighbours, self.sims = neighbours, sims

    def project(self, X: np.ndarray) -> np.ndarray:
        Z = self.pca.transform(((X - self.mean) / self.scale).astype(np.float32))
        return normalise(Z.astype(np.float32))


def normalise(Z: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    return Z / np.where(norms > 0, norms, 1.0)


def nearest(Q: np.ndarray, Z: np.ndarray, k: int, *, skip_self: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``Z`` most similar (dot product) to each row of ``Q``, exactly.

    Returns (indices, similarities), each of shape (len(Q), k), most similar first. With
    ``skip_self`` (``Q`` is ``Z``) a row is not its own neighbour.
    """
    k = min(k, len(Z) - int(skip_self))
    idx = np.empty((len(Q), k), dtype=np.int64)
    sim = np.empty((len(Q), k), dtype=np.float32)
    for start in range(0, len(Q), _BLOCK):
        block = Q[start:start + _BLOCK] @ Z.T
        if skip_self:
            rows = np.arange(len(block))
            block[rows, start + rows] = -np.inf
        part = np.argpartition(-block, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(block, part, axis=1)
        order = np.argsort(-vals, axis=1)
        idx[start:start + len(block)] = np.take_along_axis(part, order, axis=1)
        sim[start:start + len(block)] = np.take_along_axis(vals, order, axis=1)
    return idx, sim


def graph_of(U: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None, n_components: int,
           n_neighbors: int, seed: int) -> Graph:
    h = hashlib.blake2b(np.ascontiguousarray(U).tobytes(), digest_size=16)
    for stat in stats or ():
        h.update(np.ascontiguousarray(stat, dtype=np.float64).tobytes())
    h.update(repr((U.shape, str(U.dtype), n_components, n_neighbors, seed)).encode())
    key = h.hexdigest()
    if key in _GRAPHS:
        _GRAPHS.move_to_end(key)
        return _GRAPHS[key]
    if stats is None:
        mean, scale = U.mean(axis=0, dtype=np.float64), U.std(axis=0, dtype=np.float64)
    else:
        mean, scale = (np.asarray(a, dtype=np.float64).ravel() for a in stats)
    scale = np.where(scale > 0, scale, 1.0)
    S = ((U - mean) / scale).astype(np.float32)
    pca = PCA(n_components=min(n_components, *S.shape), svd_solver="randomized",
              random_state=seed).fit(S)
    Z = normalise(pca.transform(S).astype(np.float32))
    neighbours, sims = nearest(Z, Z, n_neighbors, skip_self=True)
    graph = Graph(mean, scale, pca, Z, neighbours, sims)
    _GRAPHS[key] = graph
    while len(_GRAPHS) > _GRAPH_CACHE_SIZE:
        _GRAPHS.popitem(last=False)
    return graph


def spread_labels(graph: Graph, X: np.ndarray, y_index: np.ndarray, n_classes: int,
                  *, n_neighbors: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Spread labels ``y_index`` (class indices) of items ``X`` over the sample's graph.

    Returns the class distribution of every sample item, shape (n_sample, n_classes)
    (rows of zeros where nothing reached), and a mask of the sample items that are the
    labeled items themselves (same embedding), which must not be pseudo-labeled.
    """
    n_lab, n_u = len(X), len(graph.Z)
    lab_idx, lab_sim = nearest(graph.project(X), graph.Z, n_neighbors)
    same = np.zeros(n_u, dtype=bool)
    same[lab_idx[lab_sim >= _DUPLICATE_SIMILARITY]] = True
    k_u = graph.neighbours.shape[1]
    rows = np.concatenate([np.repeat(np.arange(n_lab), lab_idx.shape[1]),
                           n_lab + np.repeat(np.arange(n_u), k_u)])
    cols = n_lab + np.concatenate([lab_idx.ravel(), graph.neighbours.ravel()])
    weights = np.concatenate([lab_sim.ravel(), graph.sims.ravel()])
    weights = np.clip(weights, 0.0, None).astype(np.float64) ** _POWER
    n = n_lab + n_u
    W = sp.csr_matrix((weights, (rows, cols)), shape=(n, n))
    W = W + W.T
    degree = np.asarray(W.sum(axis=1)).ravel()
    d = 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0))
    A = sp.identity(n, format="csr") - alpha * (sp.diags(d) @ W @ sp.diags(d))
    Y = np.zeros((n, n_classes))
    Y[np.arange(n_lab), y_index] = 1.0
    Y[:n_lab] /= np.maximum(Y[:n_lab].sum(axis=0), 1.0)
    F = np.zeros((n_u, n_classes))
    for c in range(n_classes):
        if Y[:, c].any():
            F[:, c] = np.clip(cg(A, Y[:, c], maxiter=_CG_ITERATIONS)[0][n_lab:], 0.0, None)
    return F, same


def extend(graph: Graph, F: np.ndarray, X: np.ndarray, n_neighbors: int) -> np.ndarray:
    """Class scores of new items ``X``: their nearest sample items' ``F``, weighted as
    graph edges; shape (len(X), n_classes)."""
    idx, sim = nearest(graph.project(X), graph.Z, n_neighbors)
    weights = np.clip(sim, 0.0, None).astype(np.float64) ** _POWER
    return np.einsum("qk,qkc->qc", weights, F[idx])
