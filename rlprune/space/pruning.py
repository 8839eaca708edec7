"""Prunable groups, the cost-model tables and real pruning. The ONLY module that imports torch_pruning.

A *group* is one torch-pruning dependency group: every layer whose channels must shrink together
(the convs of one residual stage, a conv with its BatchNorm and its consumers). One group = one agent =
one ratio. Ratios are applied per group, never per conv: giving members of a coupled group different
ratios silently keeps only the last one in torch-pruning 1.6.1.

    space = PruningSpace.from_model(model, torch.randn(1, 3, 32, 32))
    space.groups[0].features     # fixed-length description, see FEATURE_NAMES
    space.cost([0.5] * space.n_groups)   # exact (params, MACs), no pruning
    pruned = space.apply([0.5] * space.n_groups)   # a pruned deepcopy
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from rlprune.errors import ConfigError, TraceError
from rlprune.measure.spec import IMPORTANCES
from rlprune.space.costmodel import CostModel, validate_ratios
from rlprune.space.layercost import (
    CONV,
    Call,
    batch_size,
    channel_sizes,
    evaluate,
    is_depthwise,
    known_cost,
    macs_coef,
    params_coef,
    separate_in_out,
)

#: What each entry of ``Group.features`` means (all roughly in [0, 1] so an SPN needs no rescaling).
FEATURE_NAMES = (
    "depth",  # forward position of the group's first layer, 0 = first group, 1 = last
    "log_channels",  # log2(channels) / 10
    "log_in_channels",  # log2(input channels of the root layer) / 10
    "kernel",  # root kernel size / 7 (1 for Linear roots: 1/7)
    "stride",  # root stride / 4
    "log_spatial",  # log2(root output height * width + 1) / 20
    "params_share",  # params removed per unit ratio of this group alone / model params
    "macs_share",  # MACs removed per unit ratio of this group alone / model MACs
    "n_coupled",  # conv/linear layers whose OUTPUT channels are in the group, / 10
    "n_consumers",  # conv/linear layers whose INPUT channels are in the group, / 10
    "residual",  # 1 if more than one layer produces these channels (coupled by an add)
    "depthwise",  # 1 if a depthwise conv belongs to the group
    "is_linear",  # 1 if the root is a Linear layer
)

# Channel-reordering ops: torch-pruning maps indices through them as if they were elementwise, which
# prunes the wrong channels (channel shuffle). Groups crossing one are skipped, never pruned wrongly.
_UNSAFE_OPS = ("Permute", "Transpose", "Roll", "Flip", "Gather", "Index")


@dataclass(frozen=True)
class Group:
    """One prunable dependency group.

    Attributes:
        id: ``group_XX`` in forward order.
        root: name of the layer torch-pruning roots the group at (its output channels are pruned).
        channels: number of channels; ``ratio * channels`` of them are removed.
        layers: names of the layers whose output channels belong to the group (convs, linears, norms).
        consumers: names of conv/linear layers whose input channels belong to the group.
        params: parameters of ``layers`` (what the group's own weights weigh).
        macs: MACs of ``layers`` on the example input (per sample).
        features: float32 vector described by ``FEATURE_NAMES``.
    """

    id: str
    root: str
    channels: int
    layers: tuple[str, ...]
    consumers: tuple[str, ...]
    params: int
    macs: int
    features: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        """JSON-ready form (used by ``rlprune groups --json``)."""
        return {
            "id": self.id,
            "root": self.root,
            "channels": self.channels,
            "layers": list(self.layers),
            "consumers": list(self.consumers),
            "params": self.params,
            "macs": self.macs,
            "features": dict(zip(FEATURE_NAMES, [round(float(v), 6) for v in self.features], strict=True)),
        }


class PruningSpace:
    """The prunable groups of a model, its exact cost model, and real pruning.

    Build with :meth:`from_model`; the model passed in is never modified.
    """

    def __init__(self, model, example_inputs, groups, cost_model, roots, skipped):
        self.model = model
        self.example_inputs = example_inputs
        self.groups: list[Group] = groups
        self.cost_model: CostModel = cost_model
        self._roots = roots  # group index -> root layer name
        self.skipped: list[str] = skipped  # human-readable reasons for groups left out

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model: nn.Module, example_inputs, round_to: int = 1, ignored_layers=None,
                   max_ratio: float = 0.9) -> PruningSpace:
        """Trace ``model`` with torch-pruning and describe its prunable groups.

        Args:
            model: any ``nn.Module``; it is traced in eval mode and restored to its mode afterwards.
            example_inputs: a tensor (batch of 1 is fine) the model accepts.
            round_to: kept channels are rounded down to a multiple of this.
            ignored_layers: layer names (or modules) never to prune. The layers that produce the model's
                outputs are always ignored.
            max_ratio: largest ratio any group may take, in (0, 1).

        Returns:
            A ``PruningSpace``.

        Raises:
            TraceError: torch-pruning cannot trace the model, or nothing in it can be pruned.
            ConfigError: an ignored layer name does not exist, or a bad ``round_to``/``max_ratio``.
        """
        if not isinstance(model, nn.Module):
            raise ConfigError(f"expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(round_to, int) or round_to < 1:
            raise ConfigError(f"round_to={round_to!r} must be a positive integer")
        if not 0 < max_ratio < 1:
            raise ConfigError(f"max_ratio={max_ratio!r} must lie in (0, 1), e.g. 0.9")
        names = {m: n for n, m in model.named_modules()}
        ignored = _resolve_ignored(model, ignored_layers)
        was_training = model.training
        model.eval()
        try:
            calls, DG = _trace(model, example_inputs, names)
        finally:
            model.train(was_training)
        ignored += [m for m in _output_layers(DG) if m not in ignored]

        raw, skipped = [], []
        for group in DG.get_all_groups(ignored_layers=ignored, root_module_types=(*CONV, nn.Linear)):
            why = _unsupported(group, DG, names)
            root = group[0].dep.target.module
            if why:
                skipped.append(f"{names.get(root, '?')}: {why}")
                warnings.warn(f"rlprune: not pruning the group rooted at {names.get(root, '?')}: {why}",
                              stacklevel=2)
                continue
            if len(group[0].idxs) < 2:
                continue
            raw.append(group)
        if not raw:
            raise TraceError(
                f"{type(model).__name__} has no prunable conv/linear groups "
                f"(skipped: {'; '.join(skipped) or 'none'}); pass a model with conv or linear layers"
            )
        first_call = {}
        for c in calls:
            first_call.setdefault(c.module, c.order)
        raw.sort(key=lambda g: min(first_call.get(d.target.module, 1 << 30) for d, _ in g
                                   if DG.is_out_channel_pruning_fn(d.handler)))
        cm, per_group = _build_cost_model(raw, calls, DG, model, round_to, max_ratio, example_inputs)
        groups = _describe_groups(raw, DG, model, calls, cm, per_group)
        roots = [g.root for g in groups]
        return cls(model, example_inputs, groups, cm, roots, skipped)

    # ------------------------------------------------------------------ queries
    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def max_ratio(self) -> float:
        return self.cost_model.max_ratio

    @property
    def base_params(self) -> int:
        return int(round(self.cost_model.base[0]))

    @property
    def base_macs(self) -> int:
        return int(round(self.cost_model.base[1]))

    def features(self) -> np.ndarray:
        """``(n_groups, len(FEATURE_NAMES))`` float32 matrix of group features."""
        return np.stack([g.features for g in self.groups]).astype(np.float32)

    def cost(self, ratios) -> tuple[int, int]:
        """Exact (params, MACs) after pruning with ``ratios``, without pruning (see ``CostModel``)."""
        return self.cost_model.cost(ratios)

    def cost_batch(self, R) -> tuple[np.ndarray, np.ndarray]:
        """Exact params and MACs for each row of an ``(N, n_groups)`` ratio matrix."""
        return self.cost_model.cost_batch(R)

    def achieved(self, ratios) -> np.ndarray:
        """The ratios really applied after rounding kept channels to ``round_to``."""
        return self.cost_model.achieved(ratios)

    # ------------------------------------------------------------------ pruning
    def apply(self, ratios, importance: str = "l1", data=None, seed: int = 0) -> nn.Module:
        """Prune a deepcopy of the model; the original is untouched.

        Args:
            ratios: one ratio per group (fraction of its channels removed), in ``[0, max_ratio]``.
            importance: channel criterion, one of ``IMPORTANCES``.
            data: ``(inputs, targets)`` batch, required by ``taylor`` (its gradients rank channels).
            seed: seeds ``random`` importance.

        Returns:
            The pruned model, in the mode the original was in.

        Raises:
            ConfigError: bad ratios or importance, or ``taylor`` without ``data``.
            TraceError: the pruned model no longer runs (reported, never returned broken).
        """
        r = validate_ratios(ratios, self.n_groups, self.max_ratio)
        keep = self.cost_model.channels - np.round(self.achieved(r) * self.cost_model.channels)
        imp = _importance(importance, seed)
        model = copy.deepcopy(self.model)
        was_training = model.training
        model.eval()
        DG = tp.DependencyGraph().build_dependency(model, example_inputs=self.example_inputs)
        mods = dict(model.named_modules())
        if importance == "taylor":
            _taylor_grads(model, data)
        for gi, (root_name, C) in enumerate(zip(self._roots, self.cost_model.channels, strict=True)):
            n_prune = int(C - keep[gi])
            if n_prune <= 0:
                continue
            root = mods[root_name]
            scores = _scores(imp, _full_group(DG, root, int(C)))
            idxs = sorted(torch.argsort(scores)[:n_prune].tolist())
            DG.get_pruning_group(root, DG.get_pruner_of_module(root).prune_out_channels, idxs=idxs).prune()
        model.zero_grad(set_to_none=True)
        try:
            with torch.no_grad():
                _forward(model, self.example_inputs)
        except Exception as e:  # noqa: BLE001 - any failure means the pruned graph is broken
            raise TraceError(f"pruning {type(self.model).__name__} produced a model that does not run: {e}; "
                             f"add the offending layer to ignored_layers") from e
        model.train(was_training)
        return model

    def channel_scores(self, importance: str = "l1", data=None, seed: int = 0) -> list[np.ndarray]:
        """Per-group channel importance on the unpruned model (what ``apply`` ranks by).

        Scores are normalised within each group (torch-pruning's default ``mean`` normaliser), so they can
        be compared across groups, as global pruning does.

        Returns:
            One float array of length ``channels`` per group.
        """
        imp = _importance(importance, seed)
        model = copy.deepcopy(self.model).eval()
        DG = tp.DependencyGraph().build_dependency(model, example_inputs=self.example_inputs)
        if importance == "taylor":
            _taylor_grads(model, data)
        mods = dict(model.named_modules())
        out = []
        for root_name, C in zip(self._roots, self.cost_model.channels, strict=True):
            group = _full_group(DG, mods[root_name], int(C))
            out.append(_scores(imp, group).numpy().astype(np.float64))
        return out

# ====================================================================== tracing helpers
def _forward(model, example_inputs):
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def _resolve_ignored(model, ignored_layers) -> list[nn.Module]:
    mods = dict(model.named_modules())
    out = []
    for item in ignored_layers or []:
        if isinstance(item, nn.Module):
            out.append(item)
        elif item in mods:
            out.append(mods[item])
        else:
            raise ConfigError(f"ignored layer {item!r} is not a layer of the model; "
                              f"use names from model.named_modules(), e.g. {next(iter(mods), '')!r}")
    return out


def _trace(model, example_inputs, names) -> tuple[list[Call], tp.DependencyGraph]:
    """Build the dependency graph while recording every leaf module call (shapes and grad_fn)."""
    calls: list[Call] = []
    recording = [False]  # torch-pruning also runs layers outside the traced forward; skip those calls

    def hook(module, inputs, output):
        if not recording[0]:
            return
        x = inputs[0] if isinstance(inputs, tuple) and inputs else inputs
        if not (torch.is_tensor(x) and torch.is_tensor(output)):
            return
        calls.append(Call(names.get(module, "?"), module, tuple(x.shape), tuple(output.shape),
                           output.grad_fn, len(calls)))

    def traced_forward(model, example_inputs):
        recording[0] = True
        try:
            return _forward(model, example_inputs)
        finally:
            recording[0] = False

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        DG = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs,
                                                   forward_fn=traced_forward)
    except Exception as e:  # noqa: BLE001 - torch-pruning raises anything when tracing fails
        raise TraceError(f"torch-pruning cannot trace {type(model).__name__}: {type(e).__name__}: {e}. "
                         f"Check that example inputs match the model (e.g. --input-shape C,H,W)") from e
    finally:
        for h in handles:
            h.remove()
    return calls, DG


def _output_layers(DG) -> list[nn.Module]:
    """Conv/linear layers that produce the model's outputs (walk back from graph sinks)."""
    found, seen = [], set()
    stack = [n for n in DG.module2node.values() if not n.outputs]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, (*CONV, nn.Linear)):
            found.append(node.module)
            continue
        stack.extend(node.inputs)
    return found


def _unsupported(group, DG, names) -> str:
    """Why a group cannot be pruned safely, or ''."""
    for dep, _ in group:
        m = dep.target.module
        if isinstance(m, CONV) and m.groups > 1 and not is_depthwise(m):
            return f"grouped conv {names.get(m, '?')} (groups={m.groups}) is not supported"
        grad_fn = getattr(dep.target, "grad_fn", None)
        op = type(grad_fn).__name__ if grad_fn is not None else ""
        if any(u in op for u in _UNSAFE_OPS):
            return f"channels pass through {op} (e.g. a channel shuffle); pruning would reorder them"
        if isinstance(m, nn.Module) and not known_cost(m) and any(True for _ in m.parameters(False)):
            return f"layer {names.get(m, '?')} ({type(m).__name__}) has no exact cost model"
    return ""


# ====================================================================== cost model tables
def _dep_sizes(raw, DG):
    """{(node, side): {group_index: entries removed per channel}} from full-index groups."""
    table: dict = {}
    for gi, group in enumerate(raw):
        C = len(group[0].idxs)
        for dep, idxs in group:
            node = dep.target
            m = node.module
            side = "merged"
            if separate_in_out(m):
                side = "out" if DG.is_out_channel_pruning_fn(dep.handler) else "in"
            key = (id(node), side)
            coef = len(idxs) / C
            table.setdefault(key, {})
            table[key][gi] = max(table[key].get(gi, 0.0), coef)
    return table


def _build_cost_model(raw, calls, DG, model, round_to, max_ratio, example_inputs):
    G = len(raw)
    table = _dep_sizes(raw, DG)
    node_of_grad = {id(n.grad_fn): n for n in DG.module2node.values() if getattr(n, "grad_fn", None)}
    batch = batch_size(example_inputs)
    dims_size, dims_coef, t_in, t_out, p_coef, m_coef = [], [], [], [], [], []
    per_group = np.zeros((G, 2))  # params, macs of the layers producing each group's channels

    def new_dim(size, node, side):
        row = np.zeros(G)
        for gi, c in table.get((id(node), side), {}).items() if node is not None else []:
            row[gi] = c
        dims_size.append(float(size))
        dims_coef.append(row)
        return len(dims_size) - 1

    counted_params = set()
    for call in calls:
        m = call.module
        node = DG.module2node.get(m) or node_of_grad.get(id(call.out_grad_fn))
        cin, cout = channel_sizes(call)
        if separate_in_out(m):
            di, do = new_dim(cin, node, "in"), new_dim(cout, node, "out")
        else:
            do = new_dim(cout, node, "merged")
            di = do
        params = np.zeros(4)
        if m not in counted_params:
            counted_params.add(m)
            params = params_coef(m)
        macs = macs_coef(m, call, batch)
        t_in.append(di)
        t_out.append(do)
        p_coef.append(params)
        m_coef.append(macs)
        if node is not None:
            for gi in table.get((id(node), "out" if separate_in_out(m) else "merged"), {}):
                size_in, size_out = cin, cout
                per_group[gi, 0] += evaluate(params, size_in, size_out)
                per_group[gi, 1] += evaluate(macs, size_in, size_out)
    # Parameters no recorded call owns (unused layers, parameters held by containers): constant.
    leftover = sum(p.numel() for mod in model.modules() if mod not in counted_params
                   for p in mod.parameters(recurse=False))
    if leftover:
        t_in.append(-1)
        t_out.append(-1)
        p_coef.append(np.array([0.0, 0.0, 0.0, float(leftover)]))
        m_coef.append(np.zeros(4))
    channels = np.array([len(g[0].idxs) for g in raw], dtype=np.int64)
    cm = CostModel(
        channels=channels,
        dim_size=np.asarray(dims_size, dtype=np.float64),
        dim_coef=np.asarray(dims_coef, dtype=np.float64).reshape(-1, G),
        term_in=np.asarray(t_in, dtype=np.int64),
        term_out=np.asarray(t_out, dtype=np.int64),
        params_coef=np.asarray(p_coef, dtype=np.float64).reshape(-1, 4),
        macs_coef=np.asarray(m_coef, dtype=np.float64).reshape(-1, 4),
        round_to=round_to,
        max_ratio=max_ratio,
    )
    return cm, per_group


# ====================================================================== description
def _describe_groups(raw, DG, model, calls, cm, per_group) -> list[Group]:
    names = {m: n for n, m in model.named_modules()}
    G = len(raw)
    p0, m0 = cm.base
    mr = cm.max_ratio
    E = np.eye(G) * mr
    p1, m1 = cm.cost_batch(E)
    out_shape = {}
    for c in calls:
        out_shape.setdefault(c.module, c.out_shape)
    groups = []
    for gi, group in enumerate(raw):
        root = group[0].dep.target.module
        layers, consumers = [], []
        depthwise = False
        for dep, _ in group:
            m = dep.target.module
            if not isinstance(m, nn.Module):
                continue
            depthwise |= is_depthwise(m)
            if DG.is_out_channel_pruning_fn(dep.handler) or not separate_in_out(m):
                if names.get(m) and names[m] not in layers:
                    layers.append(names[m])
            elif isinstance(m, (*CONV, nn.Linear)) and names.get(m) not in consumers:
                consumers.append(names[m])
        coupled = [n for n in layers if isinstance(model.get_submodule(n), (*CONV, nn.Linear))]
        C = int(len(group[0].idxs))
        shape = out_shape.get(root, (1, C, 1, 1))
        spatial = float(np.prod(shape[2:])) if len(shape) > 2 else 1.0
        is_lin = isinstance(root, nn.Linear)
        feats = np.array([
            gi / max(1, G - 1),
            math.log2(C) / 10,
            math.log2(max(1, root.in_features if is_lin else root.in_channels)) / 10,
            (1 if is_lin else float(np.prod(root.kernel_size)) ** (1 / len(root.kernel_size))) / 7,
            (1 if is_lin else root.stride[0]) / 4,
            math.log2(spatial + 1) / 20,
            (p0 - p1[gi]) / (p0 * mr),
            (m0 - m1[gi]) / (m0 * mr),
            len(coupled) / 10,
            len(consumers) / 10,
            float(len(coupled) > 1),
            float(depthwise),
            float(is_lin),
        ], dtype=np.float32)
        groups.append(Group(f"group_{gi:02d}", names[root], C, tuple(layers), tuple(consumers),
                            int(round(per_group[gi, 0])), int(round(per_group[gi, 1])), feats))
    return groups


# ====================================================================== importance
def _importance(name: str, seed: int):
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    if name == "random":
        gen = torch.Generator().manual_seed(seed)
        return lambda group: torch.rand(len(group[0].idxs), generator=gen)
    raise ConfigError(f"importance {name!r} is unknown; use one of {', '.join(IMPORTANCES)}")


def _full_group(DG, root, channels: int):
    """The dependency group of ``root``'s output channels, with every index."""
    fn = DG.get_pruner_of_module(root).prune_out_channels
    return DG.get_pruning_group(root, fn, idxs=list(range(channels)))


def _scores(imp, group) -> torch.Tensor:
    scores = imp(group)
    if scores is None:  # e.g. bn_scale on a group without BatchNorm: fall back to L1
        scores = tp.importance.GroupMagnitudeImportance(p=1)(group)
    return scores.detach().cpu()


def _taylor_grads(model, data):
    if data is None:
        raise ConfigError("importance 'taylor' needs a batch: pass data=(inputs, targets)")
    x, y = data
    model.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()


def count_ops_and_params(model: nn.Module, example_inputs) -> tuple[int, int]:
    """(params, MACs) of a real model, counted exactly like torch-pruning does (for checks and reports)."""
    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return int(params), int(macs)
