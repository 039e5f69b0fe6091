"""PCA of stored teacher embeddings, fitted in one streaming pass over the store's chunks.

The fit reads each chunk once, keeps only the fit rows in it, and merges the chunk's mean and
centred scatter matrix into running float64 accumulators (Chan et al.'s pairwise update, which
avoids the cancellation of a plain ``X^T X - n mu mu^T``), in place with BLAS ``syrk``/``syr``.
Memory is O(D^2 + one chunk) whatever the number of items; ``numpy.linalg.eigh`` of the
covariance then gives the same components and explained variances as an exact in-memory PCA
(an SVD of the centred rows).

Components follow scikit-learn's sign convention (the largest-magnitude loading of each
component is positive), so results compare directly with ``sklearn.decomposition.PCA``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.linalg.blas import dsyr, dsyrk

from eastkd.pipeline.core.reading import iter_row_blocks
from eastkd.progress import Progress, progress_bar
from eastkd.store import EastkdError, ItemsTable, StoreArray


class PCACompressor:
    """Principal component projection ``y = (x - mean) @ components.T`` (optionally whitened).

    ``dim`` is the number of components (int >= 1) or, as a float in (0, 1), the fraction of
    the train variance to keep (the smallest number of components that reaches it).
    """

    method = "pca"
    uses_valid_rows = False  # unsupervised: fitted on the fit rows alone

    def __init__(self, dim: int | float, whiten: bool = False, **_unused: Any) -> None:
        if isinstance(dim, float) and not 0.0 < dim < 1.0:
            raise EastkdError(f"--dim {dim}: a fraction of variance must lie in (0, 1)")
        if not isinstance(dim, float) and int(dim) < 1:
            raise EastkdError(f"--dim {dim}: need at least one component")
        self.dim = dim
        self.whiten = bool(whiten)
        self.n_rows = 0
        self.mean_: np.ndarray | None = None
        self.components_: np.ndarray | None = None
        self.explained_variance_: np.ndarray | None = None
        self.spectrum_: np.ndarray | None = None  # all D eigenvalues, descending

    # -- what defines the output ---------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """Settings that decide the targets (PCA is deterministic: no seed)."""
        return {"dim": self.dim, "whiten": self.whiten}

    @property
    def out_dim(self) -> int:
        if self.components_ is None:
            raise RuntimeError("fit first")
        return int(self.components_.shape[0])

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, source: StoreArray, rows: np.ndarray, items: ItemsTable | None = None,
            valid_rows: np.ndarray | None = None, progress: Progress = False,
            block_items: int | None = None) -> "PCACompressor":
        """Fit on ``source[rows]`` reading each chunk of ``source`` once (chunks without fit
        rows are not read); ``block_items`` reads that many items at a time instead."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        d_in = int(np.prod(source.shape[1:]))
        if rows.size < 2:
            raise EastkdError(f"PCA needs at least 2 fit rows, got {rows.size}")
        n = 0
        mean = np.zeros(d_in, dtype=np.float64)
        # upper triangle only, updated in place by BLAS (no D x D temporaries per chunk)
        scatter = np.zeros((d_in, d_in), dtype=np.float64, order="F")
        bar = progress_bar(total=int(rows.size), desc="pca fit", unit="row", progress=progress)
        for block in iter_row_blocks(source, rows, block_items):
            x = block.reshape(len(block), d_in).astype(np.float64)
            k = x.shape[0]
            block_mean = x.mean(axis=0)
            x -= block_mean
            scatter = dsyrk(1.0, x, trans=1, beta=1.0, c=scatter, overwrite_c=1, lower=0)
            delta = block_mean - mean
            total = n + k
            scatter = dsyr(n * k / total, delta, a=scatter, overwrite_a=1, lower=0)
            mean += delta * (k / total)
            n = total
            bar.update(k)
        bar.close()
        self._finish(mean, scatter, n)
        return self

    def fit_array(self, x: np.ndarray) -> "PCACompressor":
        """Fit on an in-memory (n, D) array (same result as :meth:`fit`; for small data)."""
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(axis=0)
        xc = x - mean
        self._finish(mean, np.triu(xc.T @ xc), x.shape[0])
        return self

    def fit_moments(self, mean: np.ndarray, scatter: np.ndarray, n: int) -> "PCACompressor":
        """Fit from moments computed elsewhere (e.g. merged on a cluster): the mean of ``n``
        rows and their centred scatter matrix (full, or its upper triangle), float64."""
        self._finish(np.asarray(mean, np.float64), np.array(scatter, np.float64, order="F"), n)
        return self

    def _finish(self, mean: np.ndarray, scatter: np.ndarray, n: int) -> None:
        if not np.isfinite(scatter).all():
            raise EastkdError("embeddings contain NaN/inf; re-extract them (--dtype float32)")
        scatter /= n - 1  # the covariance (upper triangle), in place
        evals, evecs = np.linalg.eigh(scatter, UPLO="U")
        evals = np.clip(evals[::-1], 0.0, None)
        evecs = evecs[:, ::-1].T  # rows are components, largest variance first
        total = float(evals.sum())
        if total <= 0.0:
            raise EastkdError("all fit embeddings are identical (zero variance): nothing to fit")
        if isinstance(self.dim, float):
            cum = np.cumsum(evals) / total
            k = int(np.searchsorted(cum, self.dim * (1 - 1e-12), side="left")) + 1
        else:
            k = int(self.dim)
        k = min(k, len(evals), n)
        comps = evecs[:k].copy()
        idx = np.argmax(np.abs(comps), axis=1)
        comps *= np.sign(comps[np.arange(k), idx])[:, None]
        if self.whiten and evals[k - 1] <= 1e-12 * evals[0]:
            raise EastkdError(
                f"component {k} has (near) zero variance and cannot be whitened; "
                f"choose --dim below {int((evals > 1e-12 * evals[0]).sum()) + 1}")
        self.n_rows = int(n)
        self.mean_ = mean
        self.components_ = comps
        self.explained_variance_ = evals[:k].copy()
        self.spectrum_ = evals

    # -- results -------------------------------------------------------------------------------
    @property
    def explained_variance_ratio_(self) -> np.ndarray:
        assert self.spectrum_ is not None and self.explained_variance_ is not None
        return self.explained_variance_ / self.spectrum_.sum()

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(k, D) embeddings -> (k, d) float32 targets."""
        assert self.components_ is not None and self.mean_ is not None
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        y = (x - self.mean_) @ self.components_.T
        if self.whiten:
            y /= np.sqrt(self.explained_variance_)
        return y.astype(np.float32)

    def params(self) -> dict[str, np.ndarray]:
        """Everything needed to apply (or invert) the projection, plus the full spectrum."""
        assert self.spectrum_ is not None
        return {
            "mean": self.mean_,
            "components": self.components_,
            "explained_variance": self.explained_variance_,
            "explained_variance_ratio": self.explained_variance_ratio_,
            "whiten": np.array([int(self.whiten)], dtype=np.uint8),
            "spectrum": self.spectrum_,
        }

    def summary(self) -> dict[str, Any]:
        """JSON-able facts recorded in the targets section's attributes."""
        return {
            "explained_variance": float(self.explained_variance_ratio_.sum()),
            "fit_rows": self.n_rows,
        }

    @staticmethod
    def plot(fig: Any, attrs: dict[str, Any], params: dict[str, np.ndarray]) -> None:
        """Cumulative explained variance over the number of components, chosen d marked."""
        spectrum = np.asarray(params["spectrum"], dtype=np.float64)
        cum = np.cumsum(spectrum) / spectrum.sum()
        d = int(attrs["dim"])
        ax = fig.add_subplot(1, 1, 1)
        ks = np.arange(1, len(cum) + 1)
        ax.plot(ks, cum, color="C0", lw=1.5, label="cumulative explained variance")
        ax.axvline(d, color="C3", ls="--", lw=1)
        ax.plot([d], [cum[d - 1]], "o", color="C3",
                label=f"d = {d}: {100 * cum[d - 1]:.1f} % of variance")
        if len(cum) >= 64:
            ax.set_xscale("log")
        ax.set_xlim(1, len(cum))
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("number of components")
        ax.set_ylabel("fraction of train variance")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
        ax.set_title(f"PCA of {attrs['source']} ({attrs['input_dim']}-d, "
                     f"{attrs['fit_rows']} {attrs['fit_split']} rows)"
                     + (", whitened" if attrs.get("whiten") else ""))
