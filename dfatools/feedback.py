"""Feedback points and the DFA output node (DESIGN.md section 2).

How one ``loss.backward()`` trains every layer:

* In DFA mode a :class:`FeedbackPoint` records its input ``h_l`` and hands the next layer
  ``h_l.detach()``. No gradient crosses the point, so autograd never computes ``W^T delta``
  for the layer above it.
* The :class:`DFA` node sits on the network output ``y``. Its autograd function takes ``y`` and
  every recorded ``h_l`` as inputs. In backward it passes ``dL/dy`` on to the output layer (true
  gradient) and returns the DFA signal ``s_l`` as the gradient of each ``h_l``, so autograd
  back-propagates ``s_l`` through block ``l`` only.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .outputs import OutputSpec

FEEDBACK_MODES = ("shared", "independent")
ERROR_MODES = ("sum", "mean")
# What the node projects onto the feedback points: the output error (DFA), the one-hot target
# (DRTP), or nothing (shallow training: the hidden blocks get no gradient at all).
SIGNAL_MODES = ("error", "target", "none")
CLASS_DIMS = (-1, 1)  # (N, *, K) outputs, or channels-first (N, K, *) ones (DESIGN.md 11)
# How a point with more dimensions than the output gets its signal (DESIGN.md 11): one
# projection per element ("flat"), or one per feature repeated over its own positions ("shared").
POSITION_MODES = ("flat", "shared")
WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)  # dfatools.Bottleneck is an nn.Linear


def world_size() -> int:
    """The ranks of the initialized ``torch.distributed`` process group, 1 without one."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_positions(local: int, like: torch.Tensor) -> int | torch.Tensor:
    """The number of positions of the whole data-parallel batch: ``local`` summed over the
    ranks of the process group by one all-reduce, kept on ``like``'s device (no host sync);
    ``local`` itself in one process."""
    if world_size() == 1:
        return local
    count = torch.tensor(local, dtype=torch.int64, device=like.device)  # exact at any size
    torch.distributed.all_reduce(count)
    return count


class FeedbackPoint(nn.Module):
    """Marks where a DFA signal enters: the input ``h_l`` of a weight layer.

    Shape: any ``(N, *)`` in, the same out. In backprop mode, or when no gradient is being
    recorded, the point is an identity.
    """

    def __init__(self, name: str = "") -> None:
        super().__init__()
        self.name = name  # where the point sits, for messages ("layer1.0"); "" when placed by hand
        self.dfa_enabled = True
        self._recorded: torch.Tensor | None = None
        self._handed: torch.Tensor | None = None  # the detached copy given downstream

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not (self.dfa_enabled and torch.is_grad_enabled()):
            return h
        if self._recorded is not None:
            raise RuntimeError(
                f"feedback point {self.name or '(unnamed)'} ran twice in one forward pass; a "
                "point must sit on a module that runs once per forward (put it on each call "
                "site's own module instead)"
            )
        self._recorded = h
        self._handed = h.detach()
        return self._handed

    def pop(self) -> torch.Tensor | None:
        """The ``h_l`` recorded by the last forward pass, forgotten once taken."""
        h, self._recorded, self._handed = self._recorded, None, None
        return h

    def clear(self) -> None:
        """Forget what a forward pass that never reached the DFA node recorded."""
        self._recorded = self._handed = None

    def extra_repr(self) -> str:
        return repr(self.name) if self.name else ""


class _DFAFunction(torch.autograd.Function):
    """Identity on ``y``; in backward, DFA signals for the recorded hidden outputs."""

    @staticmethod
    def forward(
        ctx, node: DFA, y: torch.Tensor, positions: int | torch.Tensor, *hidden: torch.Tensor
    ) -> torch.Tensor:
        ctx.node = node
        ctx.positions = positions  # of the whole batch, every data-parallel rank's
        ctx.shapes = [h.shape for h in hidden]
        return y.view_as(y)  # an identity: no copy of the output

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        node = ctx.node
        target = node.take_target(node.position_shape(grad_y)) if node.signal == "target" else None
        signals = node.learning_signals(grad_y, target, ctx.shapes, ctx.positions)
        return (None, grad_y, None, *signals)


class DFA(nn.Module):
    """Output node that owns the feedback matrices and sends DFA signals to the feedback points.

    Args:
        points: the :class:`FeedbackPoint` modules of the network, in forward order.
        num_classes: ``K``, the size of the class dimension of the network output ``y``:
            ``(N, K)``, or ``(N, *, K)`` with position dimensions (tokens, pixels). Every
            other dimension of ``y`` is then a position, which every point's ``h_l``
            ``(N, *, ...)`` shares, and each position's error is projected onto that position
            of ``h_l`` (DESIGN.md 9).
        class_dim: ``-1`` (default): the class dimension is the last, as above. ``1``: ``y``
            is channels-first, ``(N, K, *)`` (the layout ``F.cross_entropy`` takes for a
            segmentation map), points are ``(N, C_l, *)`` with ``y``'s trailing dimensions, and
            each position's error goes to that position's ``C_l`` channels (DESIGN.md 11).
        positions: for ``class_dim=-1``, how a point with more dimensions than ``y`` (a block
            under a pooled classifier) gets its signal. ``"flat"`` (default): each element
            its own projection, ``e @ M[:, :f_l]`` with ``f_l`` every element beyond ``y``'s
            positions. ``"shared"``: the point's extra dimensions are positions of its own, by
            PyTorch's layouts (``(N, T, d)``: ``T`` positions of ``d`` features; ``(N, C, H,
            W)``: ``H*W`` positions of ``C`` channels), and one projection, divided by
            ``sqrt(number of extra positions)``, goes to each of them: after a mean pool the
            true gradient is the same at every position, which a flat projection cannot
            align with.
        output: which tensor of the model's output ``y`` is (:mod:`dfatools.outputs`): a key or
            attribute name (``"logits"``), a tuple index, or a callable; None: the output
            itself. Read by the hook that puts the node on the model, and by
            :func:`~dfatools.measure_alignment` and :func:`~dfatools.prealign`.
        error_at: the qualified name of the submodule whose output ``z`` the node sits on
            instead of the model's output (DESIGN.md 14; set by :func:`~dfatools.to_dfa`,
            which puts the hook there): the error is ``P * dL/dz``, the true gradient through
            every layer after it, and ``num_classes`` is the feature width of ``z``. None: the
            model's output.
        normalize: scale signals as in DESIGN.md 2 (default) or use the raw ``N(0, 1)`` matrix.
        feedback: ``"shared"`` (one ``(K, D)`` matrix, sliced per point) or ``"independent"``
            (one ``(K, d_l)`` matrix per point).
        error: ``"sum"`` feeds back ``e = P * dL/dy`` (``P``: the number of positions, ``N``
            for an ``(N, K)`` output; softmax minus one-hot per position for a mean
            cross-entropy), ``"mean"`` feeds back ``dL/dy``.
        data_parallel: the model trains under ``DistributedDataParallel``, each rank on a
            slice of the batch. Then ``P`` counts the positions of every rank (one all-reduce
            of one number per training step, on every rank) and DRTP's target signal is scaled
            to match, so that DDP's average of the ranks' gradients is the step of one process
            on the whole batch, for every method: exactly when the slices are of one size, or
            when each rank's mean loss is weighted by its share, ``P_r * world / P``. None
            (default): whenever a ``torch.distributed`` process group is initialized; give
            False for models that are not trained data-parallel (one model per rank).
        seed: seed of the ``torch.Generator`` that draws the matrices (never the global RNG).
        signal: what is projected onto the points. ``"error"`` (DFA, default): ``e``.
            ``"target"`` (DRTP, Frenkel et al. 2021): ``-onehot(target)`` in place of ``e``, see
            :meth:`target_signals`; give the batch's class targets with :meth:`set_target`
            before ``backward``. ``"none"`` (shallow training): no signal, no matrix; the
            hidden blocks get no gradient and keep their initial weights.

    The matrices are buffers, created at the first forward pass (when the sizes ``d_l`` are
    known) on the device of the activations, and restored by ``load_state_dict``.
    """

    def __init__(
        self,
        points: Sequence[FeedbackPoint],
        num_classes: int,
        normalize: bool = True,
        feedback: str = "shared",
        error: str = "sum",
        seed: int = 0,
        signal: str = "error",
        class_dim: int = -1,
        positions: str = "flat",
        output: OutputSpec = None,
        error_at: str | None = None,
        data_parallel: bool | None = None,
    ) -> None:
        super().__init__()
        points = list(points)
        if not points:
            raise ValueError(
                "DFA needs at least one FeedbackPoint; a network with a single "
                "weight layer has nothing to train with DFA"
            )
        if not all(isinstance(p, FeedbackPoint) for p in points):
            raise TypeError("DFA points must be dfatools.FeedbackPoint modules")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if feedback not in FEEDBACK_MODES:
            raise ValueError(f"feedback must be one of {FEEDBACK_MODES}, got {feedback!r}")
        if error not in ERROR_MODES:
            raise ValueError(f"error must be one of {ERROR_MODES}, got {error!r}")
        if signal not in SIGNAL_MODES:
            raise ValueError(f"signal must be one of {SIGNAL_MODES}, got {signal!r}")
        if class_dim not in CLASS_DIMS:
            raise ValueError(f"class_dim must be one of {CLASS_DIMS}, got {class_dim!r}")
        if positions not in POSITION_MODES:
            raise ValueError(f"positions must be one of {POSITION_MODES}, got {positions!r}")
        if error_at is not None and signal == "target":
            raise ValueError(
                "signal='target' (DRTP) projects the class targets of the model's output; it "
                "has no meaning at an error_at site inside the model"
            )
        # A plain tuple, not a ModuleList: the points belong to the user's model already.
        self.points = tuple(points)
        self.num_classes = num_classes
        self.normalize = bool(normalize)
        self.feedback = feedback
        self.error = error
        self.seed = int(seed)
        self.signal = signal
        self.class_dim = class_dim
        self.positions = positions
        self.output = output
        self.error_at = error_at
        # None: whenever a torch.distributed process group is initialized (read at each step).
        self._data_parallel = data_parallel
        self.site_calls = 0  # passes of the error_at site in this forward (placement hooks)
        self.dfa_enabled = True
        self._target: torch.Tensor | None = None
        for name in self._matrix_names():
            self.register_buffer(name, None)  # sized at the first forward pass

    @property
    def data_parallel(self) -> bool:
        """Whether the signals are those of a DDP step on the whole batch of every rank: the
        ``data_parallel`` given, or (None) whether a process group is initialized."""
        if self._data_parallel is None:
            return world_size() > 1
        return self._data_parallel

    # -- matrices ------------------------------------------------------------------------------
    def _matrix_names(self) -> list[str]:
        if self.signal == "none":
            return []
        if self.feedback == "shared":
            return ["matrix"]
        return [f"matrix_{i}" for i in range(len(self.points))]

    @property
    def materialized(self) -> bool:
        return all(getattr(self, n) is not None for n in self._matrix_names())

    @property
    def matrices(self) -> list[torch.Tensor]:
        """The stored matrices ``M``: ``[(K, D)]`` when shared, ``[(K, d_l) per point]``
        otherwise."""
        if not self.materialized:
            raise RuntimeError(
                "feedback matrices are created at the first forward pass; "
                "run the model once (or load a state_dict) first"
            )
        return [getattr(self, n) for n in self._matrix_names()]

    def _materialize(self, sizes: list[int], like: torch.Tensor) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        K = self.num_classes
        if self.feedback == "shared":
            D = max(sizes)
            shapes = [(K, D)]
        else:
            shapes = [(K, d) for d in sizes]
        for name, shape in zip(self._matrix_names(), shapes):
            # Drawn on the CPU so CPU and CUDA runs share the same B.
            B = torch.randn(shape, generator=gen)
            if self.normalize:
                B = B / math.sqrt(shape[0] * shape[1])
            setattr(self, name, B.to(device=like.device, dtype=like.dtype))

    def _check_sizes(self, sizes: list[int], like: torch.Tensor) -> None:
        for name in self._matrix_names():  # e.g. a state_dict loaded on another device
            m = getattr(self, name)
            if m.device != like.device or m.dtype != like.dtype:
                setattr(self, name, m.to(device=like.device, dtype=like.dtype))
        mats = self.matrices
        if self.feedback == "shared":
            if max(sizes) != mats[0].shape[1]:
                raise ValueError(
                    f"feedback point sizes {sizes} do not match the stored (K, D) "
                    f"matrix of shape {tuple(mats[0].shape)}"
                )
        elif [m.shape[1] for m in mats] != sizes:
            raise ValueError(
                f"feedback point sizes {sizes} do not match the stored matrices "
                f"{[tuple(m.shape) for m in mats]}"
            )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # Matrices may not exist yet in a fresh model: create them with the stored shapes.
        for name in self._matrix_names():
            key = prefix + name
            if key in state_dict and getattr(self, name) is None:
                setattr(self, name, torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # -- layouts -------------------------------------------------------------------------------
    def position_shape(self, y: torch.Tensor) -> torch.Size:
        """The position dimensions of an output (or its gradient) ``y``: ``(N, *)``."""
        if self.class_dim == 1:
            return y.shape[:1] + y.shape[2:]
        return y.shape[:-1]

    def rows(self, t: torch.Tensor, ydim: int) -> torch.Tensor:
        """``t`` in rows of one position each, ``(P, -1)``: an output (or its gradient) of
        ``ydim`` dimensions as ``(P, K)``, or a point ``h_l`` as ``(P, f_l * extra)``."""
        if self.class_dim == 1:  # points have y's dimensions: channels at 1 in both
            t = t.movedim(1, -1)
            return t.reshape(-1, t.shape[-1])
        return t.reshape(math.prod(t.shape[: ydim - 1]), -1)

    def feature_size(self, shape: torch.Size, ydim: int) -> int:
        """``f_l``: the features of one position of a point of ``shape`` under an output of
        ``ydim`` dimensions, the columns of ``M`` it uses (DESIGN.md 11)."""
        if self.class_dim == 1:
            return shape[1]
        rest = shape[ydim - 1 :]
        if self.positions == "shared" and len(rest) >= 2:
            return rest[-1] if len(rest) == 2 else rest[0]
        return math.prod(rest)

    def _place(self, s: torch.Tensor, shape: torch.Size, ydim: int) -> torch.Tensor:
        """One position's signal per row, ``s`` ``(P, f_l)``, laid out as a point of ``shape``."""
        if self.class_dim == 1:  # (N, *pos, C) -> (N, C, *pos)
            return s.reshape(shape[:1] + shape[2:] + shape[1:2]).movedim(-1, 1)
        lead, rest = shape[: ydim - 1], shape[ydim - 1 :]
        f = s.shape[1]
        if f == math.prod(rest):
            return s.reshape(shape)
        s = s / math.sqrt(math.prod(rest) // f)  # shared: the same signal at each extra position
        if len(rest) == 2:  # (T, d): features last
            return s.reshape(*lead, 1, f).expand(shape)
        return s.reshape(*lead, f, *(1 for _ in rest[1:])).expand(shape)  # (C, H, W, ...)

    # -- signals -------------------------------------------------------------------------------
    def error_from_grad(
        self, grad_y: torch.Tensor, positions: int | torch.Tensor | None = None
    ) -> torch.Tensor:
        """``e`` from ``dL/dy``, both of ``y``'s shape (DESIGN.md 2, 9 and 11). ``positions``:
        ``P``, by default ``y``'s own; in training, the whole data-parallel batch's."""
        if positions is None:
            positions = grad_y.numel() // grad_y.shape[self.class_dim]
        return grad_y * positions if self.error == "sum" else grad_y

    def learning_signals(
        self,
        grad_y: torch.Tensor,
        target: torch.Tensor | None,
        shapes: Sequence[torch.Size],
        positions: int | torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """What this node sends to points of these shapes ``(N, *)``: DFA signals from
        ``dL/dy`` (``y``'s shape), DRTP signals from the class targets ``(N, *)``, or zeros
        (shallow). ``positions``: those of the whole batch (all data-parallel ranks'), by
        default ``y``'s."""
        if self.signal == "none":
            return [grad_y.new_zeros(shape) for shape in shapes]
        if self.signal == "target":
            if target is None:
                raise ValueError("signal='target' (DRTP) needs the class targets")
            return self.target_signals(target, shapes, positions)
        return self.signals(self.error_from_grad(grad_y, positions), shapes)

    def signals(self, error: torch.Tensor, shapes: Sequence[torch.Size]) -> list[torch.Tensor]:
        """DFA signals ``s_l``, each of shape ``shapes[l]`` ``(N, *, ...)``, from ``e`` of
        ``y``'s shape: position ``p`` of ``s_l`` is ``e[p] @ M[:, :f_l]``, scaled."""
        flat = self.rows(error, error.dim())  # (P, K)
        return self._spread(lambda M: flat @ M, shapes, error.dim())

    def target_signals(
        self,
        target: torch.Tensor,
        shapes: Sequence[torch.Size],
        positions: int | torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """DRTP signals, each of shape ``shapes[l]`` ``(N, *, ...)``, from class targets
        ``(N, *)`` (one per position).

        DFA's projection with ``-onehot(target)`` in place of the error ``e`` (times ``1/P``,
        ``P`` positions, when ``error="mean"``), as a row gather ``-M[target]`` instead of a
        product. Why the minus sign: for softmax and cross-entropy, ``e = softmax(y) - onehot``
        is negative at the target class and positive elsewhere, so ``-onehot`` is the error's
        sign pattern without its magnitudes (Frenkel et al. call the target a "surrogate for
        the error sign"). The step ``-lr * signal`` then moves ``h_l`` along ``+onehot @ M``,
        the direction that, once the layers above align with ``M`` as in DFA, raises the
        target's logit: it descends. With ``+onehot`` the hidden layers would learn to push
        away from the target.
        """
        flat = target.reshape(-1)
        # DDP averages the ranks' gradients: the world size undoes it ("sum"), and "mean" divides
        # by the whole batch's positions. One process: world 1, positions its own.
        world = world_size() if self.data_parallel else 1
        total = flat.shape[0] if positions is None else positions
        scale = -1.0 * world if self.error == "sum" else -1.0 * world / total
        return self._spread(lambda M: M.index_select(0, flat) * scale, shapes, target.dim() + 1)

    def _spread(self, project, shapes: Sequence[torch.Size], ydim: int) -> list[torch.Tensor]:
        """``project(M)`` ``(P, D)`` for each stored ``M`` (``P`` positions), sliced, scaled
        and laid out per point, under an output of ``ydim`` dimensions."""
        mats = self.matrices
        if self.feedback == "independent":
            return [self._place(project(M), s, ydim) for M, s in zip(mats, shapes)]
        M = mats[0]
        D = M.shape[1]
        projected = project(M)  # (P, D): one product serves every point
        out = []
        for shape in shapes:
            f = self.feature_size(shape, ydim)
            s = projected[:, :f]
            if self.normalize and f != D:
                s = s * math.sqrt(D / f)
            out.append(self._place(s, shape, ydim))
        return out

    # -- targets (DRTP) --------------------------------------------------------------------------
    def set_target(self, target: torch.Tensor) -> None:
        """Give the class targets ``(N, *)`` (one per position of the output ``(N, *, K)``) of
        the batch whose ``backward`` comes next (DRTP).

        Used, and forgotten, by that ``backward``; other signal modes ignore it.
        """
        if self.signal != "target":
            return
        if target.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"DRTP targets are class indices of shape (N, *), got "
                f"{tuple(target.shape)} {target.dtype}"
            )
        self._target = target

    def take_target(self, positions: torch.Size) -> torch.Tensor:
        """The targets given by :meth:`set_target` for an output whose leading dimensions are
        ``positions`` (``(N,)`` for an ``(N, K)`` output), forgotten once taken."""
        target, self._target = self._target, None
        if target is None or target.shape != positions:
            got = "none" if target is None else f"targets of shape {tuple(target.shape)}"
            raise RuntimeError(
                f"signal='target' (DRTP) needs the batch's class targets: call "
                f"set_target(y) on the DFA node before backward (targets of shape "
                f"{tuple(positions)} expected, got {got})"
            )
        return target.long()

    # -- forward -------------------------------------------------------------------------------
    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` of shape ``(N, K)``, ``(N, *, K)`` or (``class_dim=1``) ``(N, K, *)`` in, the
        same ``y`` out."""
        K = self.num_classes
        if (
            not isinstance(y, torch.Tensor)
            or y.dim() < 2
            or y.shape[self.class_dim] != self.num_classes
        ):
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            layout = f"(N, {K}, *)" if self.class_dim == 1 else f"(N, {K}) or (N, *, {K})"
            hint = (
                "; name the tensor the node sits on with output= (a key or attribute such as "
                "'logits', a tuple index, or a callable)"
                if not isinstance(y, torch.Tensor)
                else "; check num_classes (and class_dim)"
            )
            raise ValueError(f"DFA expects the network output of shape {layout}, got {got}{hint}")
        if not (self.dfa_enabled and torch.is_grad_enabled()):
            return y
        self._check_distinct()
        hidden = [p.pop() for p in self.points]
        missing = [self._label(i) for i, h in enumerate(hidden) if h is None]
        if missing:
            where = "output" if self.error_at is None else f"error site {self.error_at!r}"
            raise RuntimeError(
                f"feedback points {', '.join(missing)} were not reached in this forward "
                f"pass; every point passed to DFA must be used before the {where}"
            )
        recorded = [h for h in hidden if h is not None]
        lead = self.position_shape(y)
        for i, h in enumerate(recorded):
            at = h.shape[:1] + h.shape[2:] if self.class_dim == 1 else h.shape[: len(lead)]
            if at != lead:
                where = "(N, C_l, *) with" if self.class_dim == 1 else "starting with"
                raise ValueError(
                    f"feedback point {self._label(i)} has shape {tuple(h.shape)}, but the "
                    f"output y of shape {tuple(y.shape)} makes {tuple(lead)} the position "
                    f"dimensions every point must have: {where} them"
                )
        if self.signal == "none":
            # The points handed on detached copies: only the output layer is in the graph.
            return y
        self.prepare([h.shape for h in recorded], y)
        # Under torch.distributed, e = P * dL/dy with P the whole batch's positions: with DDP's
        # average of the ranks' gradients, the step of one process on the whole batch.
        positions: int | torch.Tensor = y.numel() // y.shape[self.class_dim]
        if self.data_parallel:
            positions = global_positions(y.numel() // y.shape[self.class_dim], y)
        return _DFAFunction.apply(self, y, positions, *recorded)

    def _label(self, i: int) -> str:
        name = self.points[i].name
        return f"{i} ({name!r})" if name else str(i)

    def _check_distinct(self) -> None:
        """Two points on one tensor: the outer one would record a detached copy, so the
        module between them would get no signal at all."""
        handed = {id(p._handed): i for i, p in enumerate(self.points) if p._handed is not None}
        for i, p in enumerate(self.points):
            j = handed.get(id(p._recorded))
            if p._recorded is not None and j is not None:
                for q in self.points:
                    q.clear()
                raise ValueError(
                    f"feedback points {self._label(j)} and {self._label(i)} sit on one tensor "
                    "(a module and a container whose output is that module's output): keep "
                    "one of them"
                )

    def prepare(self, shapes: Sequence[torch.Size], like: torch.Tensor) -> None:
        """Create the matrices for points of these shapes ``(N, *, ...)``, or check they fit.

        ``like``: the output ``y``, whose dimensions but the class one are the positions.
        """
        if self.signal == "none":
            return  # no matrix to create or check
        sizes = [self.feature_size(s, like.dim()) for s in shapes]
        if not self.materialized:
            self._materialize(sizes, like)
        else:
            self._check_sizes(sizes, like)

    def switch_off(self) -> None:
        """Make the node and its points identities for good: gradients cross the points (fa,
        sign, bp), which stay as markers where :func:`~dfatools.measure_alignment` measures."""
        self.dfa_enabled = False
        for p in self.points:
            p.dfa_enabled = False

    @contextlib.contextmanager
    def backprop(self) -> Iterator[None]:
        """Within this block every feedback point is an identity: ``backward`` gives exact BP."""
        saved = self.dfa_enabled, [p.dfa_enabled for p in self.points]
        self.dfa_enabled = False
        for p in self.points:
            p.dfa_enabled = False
        try:
            yield
        finally:
            self.dfa_enabled = saved[0]
            for p, flag in zip(self.points, saved[1]):
                p.dfa_enabled = flag

    def extra_repr(self) -> str:
        return (
            f"points={len(self.points)}, num_classes={self.num_classes}, "
            f"normalize={self.normalize}, feedback={self.feedback!r}, error={self.error!r}, "
            f"seed={self.seed}, signal={self.signal!r}, class_dim={self.class_dim}, "
            f"positions={self.positions!r}"
            + (f", error_at={self.error_at!r}" if self.error_at is not None else "")
        )
