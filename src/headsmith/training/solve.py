"""Frozen heads solved, not trained by luck.

With a frozen backbone each head is a fixed-feature problem. The linear head is a multinomial logistic regression,
solved to convergence by full-batch L-BFGS on the cached embeddings (scikit-learn's method, with its `C`); the MLP
head is trained with a plateau schedule until its loss stops falling. Each head's regularization (for an MLP also
its width and dropout; for `head=auto`, linear or MLP) is chosen by k-fold cross-validation on the non-test rows,
scored by the selection rule; the final fit then uses all of them, and the out-of-fold predictions at the chosen
setting stand in for validation data (thresholds, the `val` metrics): never rows a head was fit on. With `folds: 0`
the validation split is the held-out part and the final fit uses the training split. A head with more rows than
`search_rows` is searched on a stratified sample of them, and its final fit reads all of them from the embedding
cache a part at a time: no size of snapshot is held in memory at once.

L2 pulls a new head toward zero and a re-trained head toward the base head's weights (its prior), so a small
snapshot nudges a base head instead of replacing it."""

from __future__ import annotations

import itertools
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import scipy.optimize
import torch
from torch.nn import functional as F

from headsmith.data.datamodule import balanced_weights
from headsmith.errors import HeadsmithError
from headsmith.evaluation.metrics import head_metrics, summarize
from headsmith.evaluation.report import console
from headsmith.models.heads import LinearHead, MLPHead
from headsmith.models.net import MultiHeadNet, module_key

HEAD_KINDS = {"linear": LinearHead, "mlp": MLPHead}
TARGETS = {f"{cls.__module__}.{cls.__qualname__}": kind for kind, cls in HEAD_KINDS.items()}


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class FeatureRows:
    """Embeddings of some rows of a snapshot (`features` at `positions`), read on demand: what a fit over more
    rows than fit in memory reads, a part at a time (the linear solve) or a batch at a time (the MLP)."""
    PART_ROWS = 16_384  # 50 MB of float64 at 384 dimensions, per part in flight

    def __init__(self, features, positions: np.ndarray):
        self.features, self.positions = features, np.asarray(positions, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), int(self.features.shape[1])

    def __getitem__(self, index) -> torch.Tensor:
        return torch.as_tensor(self.features[self.positions[np.asarray(index) if torch.is_tensor(index) else index]],
                               dtype=torch.float32)

    def parts(self) -> list[slice]:
        return [slice(start, start + self.PART_ROWS) for start in range(0, len(self), self.PART_ROWS)]


@dataclass(frozen=True)
class Setting:
    """One point of a head's search: its kind and the values that regularize it."""
    kind: str  # linear | mlp
    params: tuple[tuple[str, float], ...]

    def __str__(self) -> str:
        return " ".join([self.kind, *(f"{k}={v:g}" for k, v in self.params)])

    @property
    def values(self) -> dict:
        return dict(self.params)


@dataclass
class Fit:
    """A fitted head: its weights (the head module's state dict) and how the fit ended."""
    state: dict[str, torch.Tensor]
    iterations: int
    gradient: float  # linear: max |gradient| of the objective at the end; MLP: last epoch's relative loss change
    converged: bool


@dataclass
class HeadSolution:
    chosen: Setting
    score: float  # the selection rule's value on the held-out predictions at `chosen`
    fit: Fit  # the final fit
    held_out: np.ndarray  # probabilities of the held-out rows at `chosen` (rows of `held_out_index`)
    held_out_index: np.ndarray  # which fit rows those are (positions in the head's rows)
    table: list[dict] = field(default_factory=list)  # one row per setting searched
    held_out_rows: np.ndarray | None = None  # where those rows are in the held-out frame (solve_heads)

    def summary(self) -> dict:
        return {"chosen": {"head": self.chosen.kind, **self.chosen.values}, "score": self.score,
                "convergence": {"iterations": self.fit.iterations, "gradient": self.fit.gradient,
                                "converged": self.fit.converged},
                "search": self.table}


# --- the linear head: multinomial logistic regression, exactly ---

class LinearProblem:
    """Minimize sum_i s_i CE_i / sum_i s_i + ||w - w0||^2 / (2 C sum_i s_i) over one set of rows: scikit-learn's
    objective for the same C (divided by C sum_i s_i), biases not penalized, w0 a prior (else zero). Two classes are
    one logistic regression on w = W[1] - W[0] (what scikit-learn fits), returned as the softmax weights
    [-w/2, w/2] that give the same probabilities. Built once per set of rows and solved for each C of a search.

    L-BFGS runs in coordinates where the objective is nearly round: w = V diag(sigma) u, with V, lambda the
    eigenvectors and eigenvalues of the rows' covariance, each row weighted by the loss's curvature at the starting
    point (summing to c), sigma = (c lambda + 1/(C sum s))^-1/2, and the bias measured from the weighted mean row.
    The problem is the same, its minimum the same; embeddings, whose few dominant directions make it
    ill-conditioned as posed, take 5 to 50x fewer iterations. The basis is rebuilt when the curvature has moved
    3x since (a path of rising C makes the fit ever more confident). With fewer rows than features the weights'
    part outside the rows' span only meets the L2 term, so it stays at the prior's and the rest is solved in the
    span: exact, and cheaper. `x` may be float32 (half the memory; the line search then takes more steps, as the
    objective is less exact), or FeatureRows: then each product is a sum over parts of the rows read in turn, the
    same objective over rows that need not fit in memory."""

    def __init__(self, x: np.ndarray | FeatureRows, y: np.ndarray, num_classes: int,
                 sample_weight: np.ndarray | None = None):
        streamed = isinstance(x, FeatureRows) and len(x) >= x.shape[1]
        self.rows = x if streamed else None  # read a part at a time, never all at once
        x = None if streamed else np.asarray(x[:] if isinstance(x, FeatureRows) else x)
        n, self.dim = (x if x is not None else self.rows).shape
        self.span = None  # d x r orthonormal basis of the centred rows, when r < d
        if x is not None and n < self.dim:
            self.center = x.mean(0, dtype=np.float64)
            centred = x - self.center
            values, vectors = np.linalg.eigh(centred @ centred.T)
            keep = values > max(values[-1], 1e-300) * 1e-12
            self.span = (centred.T @ vectors[:, keep]) / np.sqrt(values[keep])
            x = np.asfortranarray(x @ self.span)
        self.d = self.dim if x is None else x.shape[1]
        # d x n: both products read it in memory order (no copy when `x` is Fortran-ordered, as a search passes it)
        self.xt = None if x is None else np.ascontiguousarray(x.T)
        self.num_classes, self.binary = num_classes, num_classes == 2
        self.k = 1 if self.binary else num_classes
        s = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        self.total, self.scale = s.sum(), s / s.sum()
        self.y = y
        self.onehot = None if self.rows else self._onehot(y)
        self.basis = None  # (curvature c, weighted mean row, eigenvalues, eigenvectors)

    def _onehot(self, y: np.ndarray) -> np.ndarray:  # k x n
        return (y == 1).astype(np.float64)[None, :] if self.binary else np.eye(self.num_classes)[:, y]

    def _parts(self, compute: Callable) -> list:
        """`compute(xt, onehot, scale)` of each part of the rows: all of them at once when they are in memory; else
        parts of FeatureRows.PART_ROWS read in turn, one thread per core (BLAS lets go of the GIL)."""
        if self.rows is None:
            return [compute(self.xt, self.onehot, self.scale)]

        def part(span: slice):
            return compute(self.rows[span].numpy().astype(np.float64).T, self._onehot(self.y[span]), self.scale[span])

        with ThreadPoolExecutor(_cores()) as pool:
            return list(pool.map(part, self.rows.parts()))

    def as_theta(self, pair) -> tuple[np.ndarray, np.ndarray]:
        """Softmax weights (k x d, k) -> this problem's weights and biases."""
        w, b = np.asarray(pair[0], dtype=np.float64), np.asarray(pair[1], dtype=np.float64)
        return (w[1:] - w[:1], b[1:] - b[:1]) if self.binary else (w, b)

    @staticmethod
    def _logits(xt: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (w.astype(xt.dtype) @ xt).astype(np.float64) + b[:, None]  # k x n

    def _rebuild_basis(self, w: np.ndarray, b: np.ndarray) -> None:
        def weights(xt, onehot, scale):  # each row's share of the loss's curvature
            z = self._logits(xt, w, b)
            if self.binary:
                p = 1.0 / (1.0 + np.exp(-z[0]))
                curvature = p * (1 - p)
            else:  # the largest p(1 - p) of a row: its softmax Hessian's scale
                p = np.exp(z - z.max(0))
                p /= p.sum(0)
                curvature = (p * (1 - p)).max(0)
            return scale * np.maximum(curvature, 1e-12)

        c = sum(part.sum() for part in self._parts(weights))
        if self.basis is not None and 1 / 3 < c / self.basis[0] < 3:
            return

        def moments(xt, onehot, scale):
            share = weights(xt, onehot, scale) / c
            rooted = xt * np.sqrt(share).astype(xt.dtype)
            return (xt @ share.astype(xt.dtype)).astype(np.float64), (rooted @ rooted.T).astype(np.float64)

        parts = self._parts(moments)
        mean, second = sum(p[0] for p in parts), sum(p[1] for p in parts)
        values, vectors = np.linalg.eigh(second - np.outer(mean, mean))
        self.basis = (c, mean, np.clip(values, 0.0, None), vectors)

    def solve(self, C: float, prior=None, init=None, tol: float = 1e-6,
              max_iter: int = 1000) -> tuple[np.ndarray, np.ndarray, Fit]:
        """The solution for `C` from `init` (else `prior`, else zero): softmax weights (k x d), biases (k), the fit."""
        k, d = self.k, self.d
        w0, b0 = self.as_theta(prior) if prior is not None else (np.zeros((k, self.dim)), np.zeros(k))
        w_start, b_start = self.as_theta(init) if init is not None else (w0, b0)
        outside, shift = np.zeros((k, self.dim)), np.zeros(k)
        if self.span is not None:  # into the span: w = outside + w_span span^T, the logits shifted by `outside`
            outside = w0 - (w0 @ self.span) @ self.span.T
            shift = outside @ self.center
            w0, w_start, b_start = w0 @ self.span, w_start @ self.span, b_start + shift
        self._rebuild_basis(w_start, b_start)
        c, mean, eigenvalues, basis = self.basis
        alpha = 1.0 / (C * self.total)
        sigma, sigma_b = 1.0 / np.sqrt(c * eigenvalues + alpha), 1.0 / np.sqrt(c)
        last = {}

        def theta(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            u = u.reshape(k, d + 1)
            w = (u[:, :d] * sigma) @ basis.T
            return w, sigma_b * u[:, d] - w @ mean

        def objective(u: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta(u)

            def part(xt, onehot, scale):  # the part's loss and gradient sums
                z = self._logits(xt, w, b)
                if self.binary:  # log(1 + e^z) - y z, and its derivative sigmoid(z) - y
                    loss = (np.logaddexp(0.0, z) - onehot * z)[0]
                    g = (1.0 / (1.0 + np.exp(-z)) - onehot) * scale
                else:
                    z -= z.max(0, keepdims=True)
                    log_norm = np.log(np.exp(z).sum(0))
                    loss = log_norm - (z * onehot).sum(0)
                    g = (np.exp(z - log_norm) - onehot) * scale
                return float(loss @ scale), (xt @ g.T.astype(xt.dtype)).T.astype(np.float64), g.sum(1)

            parts = self._parts(part)
            diff = w - w0
            grad_w = sum(p[1] for p in parts) + alpha * diff
            grad_b = sum(p[2] for p in parts)
            last["gradient"] = (grad_w, grad_b)  # in the problem's own coordinates
            grad_u = np.concatenate([((grad_w - np.outer(grad_b, mean)) @ basis) * sigma, sigma_b * grad_b[:, None]],
                                    axis=1)
            return sum(p[0] for p in parts) + 0.5 * alpha * float((diff * diff).sum()), grad_u.ravel()

        def largest_gradient() -> float:  # of the whole problem: outside the span it is zero
            grad_w, grad_b = last["gradient"]
            return float(max(np.abs(grad_w if self.span is None else grad_w @ self.span.T).max(),
                             np.abs(grad_b).max()))

        u = np.concatenate([(w_start @ basis) / sigma, ((b_start + w_start @ mean) / sigma_b)[:, None]], axis=1)
        u, iterations, gtol, previous = u.ravel(), 0, tol, math.inf
        for _ in range(6):  # converged when max |gradient| is below `tol` in the problem's own coordinates; L-BFGS
            # sees the round ones, so when it stops short of that it goes on with a tighter tolerance of its own, as
            # long as that helps (it does not once the objective is flat to machine precision)
            result = scipy.optimize.minimize(objective, u, jac=True, method="L-BFGS-B",
                                             options={"maxiter": max_iter - iterations, "maxls": 50, "gtol": gtol,
                                                      "ftol": 64 * np.finfo(float).eps})
            u, iterations = result.x, iterations + int(result.nit)
            objective(u)
            gradient = largest_gradient()
            if gradient <= tol or iterations >= max_iter or gradient > previous / 2:
                break
            previous, gtol = gradient, min(gtol, float(np.abs(result.jac).max())) * tol / gradient / 2
        w, b = theta(u)
        if self.span is not None:
            w, b = outside + w @ self.span.T, b - shift
        if self.binary:
            w, b = np.concatenate([-w / 2, w / 2]), np.array([-b[0] / 2, b[0] / 2])
        state = {"1.weight": torch.tensor(w, dtype=torch.float32), "1.bias": torch.tensor(b, dtype=torch.float32)}
        return w, b, Fit(state, iterations, gradient, gradient <= tol)


def fit_linear(x: np.ndarray, y: np.ndarray, num_classes: int, C: float, sample_weight: np.ndarray | None = None,
               prior: tuple[np.ndarray, np.ndarray] | None = None, init: tuple[np.ndarray, np.ndarray] | None = None,
               tol: float = 1e-6, max_iter: int = 1000) -> tuple[np.ndarray, np.ndarray, Fit]:
    """One multinomial logistic regression (see LinearProblem): softmax weights (k x d), biases (k) and the fit."""
    return LinearProblem(x, y, num_classes, sample_weight).solve(C, prior, init, tol, max_iter)


def linear_probabilities(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64) @ w.T + b
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


# --- the MLP head: Adam with a plateau schedule, until the loss stops falling ---

def fit_mlp(x: torch.Tensor, y: torch.Tensor, num_classes: int, hidden: int, dropout: float, weight_decay: float,
            class_weight: torch.Tensor | None = None, prior: dict[str, torch.Tensor] | None = None,
            init: dict[str, torch.Tensor] | None = None, seed: int = 0, lr: float = 1e-3, batch_size: int = 256,
            max_epochs: int = 200, patience: int = 3, tol: float = 1e-4) -> Fit:
    """L2 (`weight_decay`/2 x ||theta - theta0||^2, theta0 = `prior` or zero) on every weight; the learning rate drops
    tenfold when the epoch's loss has not fallen by a relative `tol` for `patience` epochs, and the fit ends after
    the third drop (converged) or at `max_epochs` (not)."""
    with torch.random.fork_rng():  # the head's initial weights and dropout, seeded; the run's own RNG untouched
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        head = MLPHead(x.shape[1], num_classes, hidden=hidden, dropout=dropout)
        if init is not None:
            head.load_state_dict(init)
        anchors = {name: (prior[name] if prior is not None else torch.zeros_like(p)) for name, p in
                   head.named_parameters()}
        optimizer = torch.optim.Adam(head.parameters(), lr=lr)
        best, stale, drops, epoch, change = math.inf, 0, 0, 0, 1.0
        head.train()
        for epoch in range(1, max_epochs + 1):
            order = torch.randperm(len(x), generator=generator)
            total = 0.0
            for start in range(0, len(x), batch_size):
                rows = order[start:start + batch_size]
                loss = F.cross_entropy(head(x[rows]), y[rows], weight=class_weight)
                penalty = sum(((p - anchors[name]) ** 2).sum() for name, p in head.named_parameters())
                optimizer.zero_grad()
                (loss + 0.5 * weight_decay * penalty).backward()
                optimizer.step()
                total += loss.item() * len(rows)
            total /= len(x)
            change = (best - total) / max(abs(best), 1e-12) if best < math.inf else 1.0  # the first epoch: all new
            if change > tol:
                best, stale = total, 0
            else:
                stale += 1
            if stale >= patience:
                drops, stale = drops + 1, 0
                if drops == 3:
                    break
                for group in optimizer.param_groups:
                    group["lr"] *= 0.1
        head.eval()
        return Fit({k: v.detach().clone() for k, v in head.state_dict().items()}, epoch, float(change), drops == 3)


@torch.inference_mode()
def mlp_probabilities(x: torch.Tensor, state: dict[str, torch.Tensor], num_classes: int, hidden: int) -> np.ndarray:
    head = MLPHead(x.shape[1], num_classes, hidden=hidden)
    head.load_state_dict(state)
    return torch.softmax(head.eval()(x), -1).double().numpy()


# --- cross-validation ---

def stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold number per row; each class is dealt round-robin over the folds after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    offset = 0
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        fold[rows] = (np.arange(len(rows)) + offset) % folds
        offset += len(rows)  # classes whose sizes are not multiples of k do not all pile into the first folds
    return fold


def rule_score(probabilities: np.ndarray, y: np.ndarray, classes: list[str], metric: str,
               class_label: str | None) -> float:
    """The selection rule's value on held-out predictions: a macro metric, one class's, or the log loss."""
    if metric == "loss":
        picked = probabilities[np.arange(len(y)), y]
        return float(-np.log(np.clip(picked, 1e-15, None)).mean())
    summary = summarize(head_metrics(len(classes))(torch.tensor(probabilities), torch.tensor(y)), classes)
    return summary["classes"][class_label][metric] if class_label else summary[metric]


def search_space(kind: str, settings, fixed: dict | None = None) -> list[Setting]:
    """The settings a head of `kind` (linear | mlp | auto) is searched over; `fixed`: values the head must keep
    (a re-trained MLP keeps the base head's width)."""
    space = []
    if kind in ("linear", "auto"):
        space += [Setting("linear", (("C", float(c)),)) for c in sorted(settings.C)]
    if kind in ("mlp", "auto"):
        mlp = settings.mlp
        hidden = [fixed["hidden"]] if fixed and "hidden" in fixed else sorted(mlp.hidden)
        space += [Setting("mlp", (("hidden", int(h)), ("dropout", float(p)), ("weight_decay", float(w))))
                  for h, p, w in itertools.product(hidden, sorted(mlp.dropout), sorted(mlp.weight_decay, reverse=True))]
    return space


class HeadSolver:
    """Searches one head's settings by cross-validation, then fits the chosen one for good."""

    def __init__(self, settings, classes: list[str], rule: tuple[str, str | None, str], balanced: bool, seed: int,
                 prior: dict[str, torch.Tensor] | None = None):
        self.settings, self.classes, self.balanced, self.seed = settings, classes, balanced, seed
        self.metric, self.class_label, self.mode = rule
        self.prior = prior  # the base head's weights, for a re-trained head

    def _weights(self, y: np.ndarray) -> np.ndarray | None:
        return balanced_weights(np.bincount(y, minlength=len(self.classes))) if self.balanced else None

    def _fit(self, setting: Setting, x: np.ndarray, y: np.ndarray, path: dict) -> tuple[Fit, callable]:
        """Fit `setting` on (x, y); returns the fit and a function giving probabilities of other rows. `path` carries
        what the settings of one split share: its linear problem, and the previous linear solution, a start for the
        next C (the path of C is ascending); "mlp": an MLP's start (else the prior's weights, or new ones)."""
        k, values, weights = len(self.classes), setting.values, self._weights(y)
        if setting.kind == "linear":
            if "problem" not in path:
                path["problem"] = LinearProblem(x, y, k, None if weights is None else weights[y])
            prior = (None if self.prior is None
                     else (self.prior["1.weight"].double().numpy(), self.prior["1.bias"].double().numpy()))
            w, b, fit = path["problem"].solve(values["C"], prior=prior, init=path.get("linear"),
                                              tol=self.settings.tol, max_iter=self.settings.max_iter)
            path["linear"] = (w, b)
            return fit, lambda rows: linear_probabilities(rows, w, b)
        mlp = self.settings.mlp
        fit = fit_mlp(x if isinstance(x, FeatureRows) else torch.as_tensor(np.ascontiguousarray(x),
                                                                            dtype=torch.float32),
                      torch.tensor(y), k, values["hidden"], values["dropout"], values["weight_decay"],
                      None if weights is None else torch.tensor(weights, dtype=torch.float32),
                      prior=self.prior, init=path.get("mlp", self.prior), seed=self.seed, lr=mlp.lr,
                      batch_size=mlp.batch_size, max_epochs=mlp.max_epochs, patience=mlp.patience)
        return fit, lambda rows: mlp_probabilities(torch.as_tensor(rows, dtype=torch.float32), fit.state, k,
                                                   values["hidden"])

    def _path(self, space: list[Setting], x: np.ndarray, y: np.ndarray, fit_rows: np.ndarray,
              held: np.ndarray) -> list[tuple[Fit, np.ndarray]]:
        """Every setting of `space` (all linear, or all MLP) fit on one split, in order (each linear fit starts
        from the previous one): the fits and their probabilities of the split's held-out rows."""
        if not space:
            return []
        # The linear problem reads float64 columns (one copy per split); the MLP takes the rows as they are
        x_fit = np.asfortranarray(x[fit_rows], np.float64) if space[0].kind == "linear" else x[fit_rows]
        y_fit, x_held, shared = y[fit_rows], x[held], {}
        path = []
        for setting in space:
            fit, predict = self._fit(setting, x_fit, y_fit, shared)
            path.append((fit, predict(x_held)))
        return path

    def _paths(self, space: list[Setting], x: np.ndarray, y: np.ndarray,
               splits: list[tuple[np.ndarray, np.ndarray]]) -> list[list[tuple[Fit, np.ndarray]]]:
        """`_path` of every split. The linear paths run side by side, one per core (numpy and scipy let go of the
        GIL in the products that cost); the MLP paths one after another, as they share torch's global RNG (their
        seeds and dropout) and its threads already."""
        linear, mlp = [s for s in space if s.kind == "linear"], [s for s in space if s.kind == "mlp"]
        workers = min(len(splits), _cores())
        with ThreadPoolExecutor(workers) as pool:
            linear_paths = list(pool.map(lambda split: iter(self._path(linear, x, y, *split)), splits))
        mlp_paths = [iter(self._path(mlp, x, y, *split)) for split in splits]
        return [[next(linear_path if s.kind == "linear" else mlp_path) for s in space]  # back in `space`'s order
                for linear_path, mlp_path in zip(linear_paths, mlp_paths)]

    def solve(self, x: np.ndarray, y: np.ndarray, space: list[Setting], splits: list[tuple[np.ndarray, np.ndarray]],
              refit: bool) -> HeadSolution:
        """`splits`: (fit rows, held-out rows) pairs over (x, y); `refit`: fit the chosen setting on every row
        afterwards (k-fold), else the single split's fit is the final one (validation split)."""
        held_out_index = np.concatenate([held for _, held in splits])
        paths = self._paths(space, x, y, splits)
        results = []
        for at, setting in enumerate(space):
            fits, probabilities = zip(*(path[at] for path in paths))
            held_out = np.concatenate(probabilities)
            score = rule_score(held_out, y[held_out_index], self.classes, self.metric, self.class_label)
            fold_scores = [rule_score(p, y[held], self.classes, self.metric, self.class_label)
                           for p, (_, held) in zip(probabilities, splits)]
            results.append((setting, score, held_out, fits, {
                "head": setting.kind, **setting.values, "score": score,
                "fold_std": float(np.std(fold_scores)) if len(fold_scores) > 1 else None,
                "iterations": max(f.iterations for f in fits), "converged": all(f.converged for f in fits),
                "chosen": False}))
        sign = 1 if self.mode == "max" else -1
        # The best score wins; on a tie, the more regularized setting (the search space lists those first).
        best = max(range(len(results)), key=lambda i: (round(sign * results[i][1], 12), -i))
        setting, score, held_out, fits, _ = results[best]
        results[best][-1]["chosen"] = True
        final = self._fit(setting, np.asfortranarray(x, np.float64), y, {})[0] if refit else fits[0]
        return HeadSolution(setting, float(score), final, held_out, held_out_index, [r[-1] for r in results])

    def fit_all(self, setting: Setting, rows: FeatureRows, y: np.ndarray, start: Fit) -> Fit:
        """`setting` fit on rows read from the cache a part at a time, from `start` (its fit on a sample of them)."""
        state = {k: v.double().numpy() for k, v in start.state.items()}
        path = {"linear": (state["1.weight"], state["1.bias"])} if setting.kind == "linear" else {"mlp": start.state}
        return self._fit(setting, rows, y, path)[0]


# --- every trained head of a network ---

def head_kind(spec: dict) -> str:
    """linear | mlp | auto, from a head spec (a `head` group node, or a package's head spec)."""
    if spec.get("candidates"):
        return "auto"
    kind = TARGETS.get(spec.get("_target_"))
    if kind is None:
        raise HeadsmithError(f"head {spec.get('_target_')}: only {', '.join(TARGETS)} can be solved; use fit=sgd")
    return kind


def build_head(setting: Setting, in_dim: int, num_classes: int, state: dict[str, torch.Tensor]) -> tuple:
    """The head module a setting describes, with its fitted weights, and the spec a package rebuilds it from."""
    spec = {"_target_": next(t for t, k in TARGETS.items() if k == setting.kind), "in_dim": in_dim,
            "num_classes": num_classes}
    spec.update({"dropout": 0.0} if setting.kind == "linear"
                else {"hidden": setting.values["hidden"], "dropout": setting.values["dropout"]})
    module = HEAD_KINDS[setting.kind](**{k: v for k, v in spec.items() if k != "_target_"})
    module.load_state_dict(state)
    return module.eval(), spec


def fit_rows(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The non-test rows: training then validation split, `part` saying which."""
    return pd.concat([splits["train"].assign(part="train"), splits["val"].assign(part="val")], ignore_index=True)


def stratified_sample(y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """At most `size` of the rows (sorted indices), seeded: each class min(its rows, 1% of `size`) first, so a rare
    class stays in a search over millions of rows, the rest shared in proportion to the rows left."""
    counts = np.bincount(y)
    quota = np.minimum(counts, max(size // 100, 1))
    left = counts - quota
    quota += np.floor(left * ((size - quota.sum()) / max(left.sum(), 1))).astype(np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(y == label), quota[label], replace=False)
                                   for label in np.flatnonzero(counts)]))


def solve_heads(net: MultiHeadNet, plan: dict[str, str], rows: pd.DataFrame, features, settings, new_head: dict,
                selection, balanced: bool, seed: int) -> tuple[dict[str, HeadSolution], pd.DataFrame]:
    """Solve every head `plan` trains (new, retrain) on `rows` (fit_rows: `position` indexes `features`, the
    embeddings of the snapshot: in memory, or Embeddings), replacing it in `net`. Returns each head's solution and
    the held-out frame: all of `rows` (k-fold), or its validation part (`settings.folds: 0`), whose predictions at
    the chosen settings the solutions hold.

    A head with more labelled rows than `settings.search_rows` is searched on a stratified sample of that many (in
    memory), and the chosen setting is then fit on all of them read from `features` a part at a time; the held-out
    frame then holds the samples' held-out rows only, each head's label kept on its own sample's rows."""
    folds, limit = int(settings.folds), settings.get("search_rows")
    positions, is_val = rows["position"].to_numpy(), (rows["part"] == "val").to_numpy()
    solutions, sampled = {}, False
    for head, action in plan.items():
        if action == "keep":
            continue
        classes = net.classes[head]
        labelled = np.flatnonzero(rows[head].notna().to_numpy())
        y_all = rows[head].iloc[labelled].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
        searched = (stratified_sample(y_all, int(limit), seed) if limit and len(labelled) > limit
                    else np.arange(len(labelled)))
        x = np.asarray(features[positions[labelled[searched]]], dtype=np.float32)
        y = y_all[searched]
        if folds:
            counts = np.bincount(y, minlength=len(classes))
            k = min(folds, int(counts.min()))  # a class with fewer rows than folds leaves some folds without it
            if k < 2:
                raise HeadsmithError(f"head '{head}': class '{classes[int(counts.argmin())]}' has {counts.min()} "
                                     f"non-test row(s); {folds}-fold cross-validation needs at least 2. Add rows of "
                                     "that class, or choose on the validation split: fit.folds=0")
            fold = stratified_folds(y, k, seed)
            splits = [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)]
        else:
            val = is_val[labelled[searched]]
            splits = [(np.flatnonzero(~val), np.flatnonzero(val))]
        key = module_key(head)
        retrain = action == "retrain"
        spec = net.head_specs[head] if retrain else new_head
        kind = head_kind(spec)
        prior = {k: v.detach().clone() for k, v in net.heads[key].state_dict().items()} if retrain else None
        rule = (selection.metric, selection.class_label if selection.head == head else None, selection.mode)
        space = search_space(kind, settings, fixed={"hidden": spec["hidden"]} if retrain and kind == "mlp" else None)
        solver = HeadSolver(settings, classes, rule, balanced, seed, prior=prior)
        whole = len(searched) == len(labelled)
        solution = solver.solve(x, y, space, splits, refit=bool(folds) and whole)
        del x
        if not whole:  # the chosen setting on all the rows it would have been fit on, from the sample's fit
            fit_on = labelled if folds else labelled[~is_val[labelled]]
            started = time.monotonic()
            with console.status(f"head '{head}': fitting {solution.chosen} on all {len(fit_on):,} rows"):
                solution.fit = solver.fit_all(solution.chosen, FeatureRows(features, positions[fit_on]),
                                              y_all if folds else y_all[~is_val[labelled]], solution.fit)
            console.print(f"head '{head}': {solution.chosen} chosen on a sample of {len(searched):,} rows, fit on all "
                          f"{len(fit_on):,} in {time.monotonic() - started:.1f} s", highlight=False)
            sampled = True
        net.heads[key], net.head_specs[head] = build_head(solution.chosen, features.shape[1], len(classes),
                                                          solution.fit.state)
        solution.held_out_rows = labelled[searched[solution.held_out_index]]  # in `rows`, for now
        solutions[head] = solution
    if sampled:  # the samples' held-out rows, each head labelled on its own
        held_at = np.unique(np.concatenate([s.held_out_rows for s in solutions.values()]))
        held_frame = rows.iloc[held_at].reset_index(drop=True)
        for head, solution in solutions.items():
            solution.held_out_rows = np.searchsorted(held_at, solution.held_out_rows)
            outside = np.ones(len(held_at), bool)
            outside[solution.held_out_rows] = False
            held_frame.loc[outside, head] = None
    else:
        held_at = np.arange(len(rows)) if folds else np.flatnonzero(is_val)
        held_frame = rows.iloc[held_at].reset_index(drop=True)
        for solution in solutions.values():
            solution.held_out_rows = np.searchsorted(held_at, solution.held_out_rows)
    return solutions, held_frame


def solve_warnings(solutions: dict[str, HeadSolution], settings) -> list[str]:
    """What a person should act on: a final fit that did not converge, a choice at the edge of its grid."""
    found = []
    for head, solution in solutions.items():
        fit, chosen = solution.fit, solution.chosen
        if not fit.converged:
            found.append(f"head '{head}': the final fit of {chosen} did not converge in {fit.iterations} "
                         + (f"iterations (max |gradient| {fit.gradient:.1e} > fit.tol={settings.tol:g}); raise "
                            "fit.max_iter" if chosen.kind == "linear" else "epochs; raise fit.mlp.max_epochs"))
        name, key = ("C", "fit.C") if chosen.kind == "linear" else ("weight_decay", "fit.mlp.weight_decay")
        # Scores along the chosen setting's grid, the other values held: rising into an edge means look beyond it.
        line = [row for row in solution.table if row["head"] == chosen.kind
                and all(row[k] == v for k, v in chosen.values.items() if k != name)]
        line.sort(key=lambda row: row[name])
        at = next(i for i, row in enumerate(line) if row["chosen"])
        neighbour = 1 if at == 0 else len(line) - 2
        if len(line) > 1 and at in (0, len(line) - 1) and line[at]["score"] != line[neighbour]["score"]:
            found.append(f"head '{head}': {name}={chosen.values[name]:g} is at the edge of the searched grid ({key}) "
                         "and scores better than its neighbour: the best setting may lie beyond it; widen the grid")
    return found
