"""Modular decomposition of attention, head by head (MoDeGPT's types II and III), in the model's own attention code.

**Value-output** (type III). Head ``h`` adds ``W_o^h a_h`` to the block's output, ``a_h = sum_t alpha_ht v_t`` its
attention-mixed values (``v = W_v^g x + b_v^g`` of its key-value head ``g``). Any projection ``Q`` of the values
passes through the mixing (``sum_t alpha_ht Q v_t = Q a_h``), so keeping ``r`` of a key-value head's ``head_dim``
value features costs the output exactly ``sum_h E||W_o^h (I - Q) a_h||^2`` over the heads that read it. With ``S``
the whitener of ``E[a a^T]`` (averaged over those heads, from the moment of ``o_proj``'s input) the best such ``Q`` is
``S P P^T S^{-1}``, ``P`` the top-``r`` eigenvectors of ``S (sum_h W_o^hT W_o^h) S``; the kept value projection is
``P^T S^{-1} W_v^g`` (``r`` rows) and head ``h``'s output projection ``W_o^h S P`` (``r`` columns). With ``r =
head_dim`` it is the original attention.

**Query-key** (type II). A head's score ``q . k`` is a sum over features; features (rotary models: the pairs ``(i, i
+ head_dim/2)`` that RoPE rotates together) are kept per key-value head by ``sum_h sqrt(E q_hu^2 E k_u^2)``, the
size of their part of the scores, and the rest dropped from the query and key projections (no refit: the kept rows
are the original rows).

The kept projections are :class:`Sliced` linears: dense layers on the kept features that write their outputs into
the kept positions of a zero vector of the original width (queries, keys, values) or read only the kept positions
(the output projection). The attention code, its reshapes by ``head_dim`` and RoPE, run unchanged; the parameters
shrink to the kept fraction. Recorded as kind ``"heads"`` and rebuilt by :func:`heads_plan`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..nn.spectral import whitener
from .linears import dense_weight, is_linear, make_dense, set_submodule

ATTENTION_NAMES = (("q_proj", "k_proj", "v_proj", "o_proj"), ("q_proj", "k_proj", "v_proj", "out_proj"),
                   ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"))
NORMED = ("q_norm", "k_norm", "v_norm")  # per-head norms after the projections (Qwen3, OLMo2): features can't drop


class Sliced(nn.Module):
    """A dense ``linear`` on some features of a layer: it reads input features ``reads`` (``None``: all) and writes
    its outputs into features ``writes`` of a zero vector of ``width`` (``None``: its outputs as they are)."""

    def __init__(self, linear: nn.Module, reads: Optional[torch.Tensor] = None,
                 writes: Optional[torch.Tensor] = None, width: Optional[int] = None):
        super().__init__()
        if (writes is None) != (width is None):
            raise ValueError("Sliced needs both writes and width, or neither")
        self.linear, self.width = linear, width
        self.register_buffer("reads", None if reads is None else reads.long())
        self.register_buffer("writes", None if writes is None else writes.long())

    @property
    def in_features(self) -> int:
        return self.linear.in_features if self.reads is None else int(self.reads.numel())

    @property
    def out_features(self) -> int:
        return self.linear.out_features if self.width is None else self.width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reads is not None:
            x = x.index_select(-1, self.reads)
        y = self.linear(x)
        if self.writes is None:
            return y
        return y.new_zeros(*y.shape[:-1], self.width).index_copy(-1, self.writes, y)

    def extra_repr(self) -> str:
        return f"reads={'all' if self.reads is None else self.reads.numel()}, width={self.width or 'as is'}"


def attention_parts(block: nn.Module, targets: Sequence[str]) -> Optional[tuple[str, str, str, str]]:
    """(query, key, value, output) projections among ``targets`` (block-relative paths), or ``None`` when the
    block's attention has no layout of separate linears that this module knows (e.g. GPT-2's fused ``c_attn``)."""
    for names in ATTENTION_NAMES:
        for t in targets:
            if not (t == names[0] or t.endswith("." + names[0])):
                continue
            prefix = t[: -len(names[0])]
            paths = tuple(prefix + n for n in names)
            if all(p in targets and _shape(block.get_submodule(p)) for p in paths):
                return paths
    return None


def _shape(module: nn.Module) -> Optional[tuple[int, int]]:
    """(out, in) features of a linear, however stored (dense, factorised, :class:`Sliced`); ``None`` if not one."""
    if is_linear(module):
        return tuple(dense_weight(module)[0].shape)
    out, inp = getattr(module, "out_features", None), getattr(module, "in_features", None)
    return (out, inp) if isinstance(out, int) and isinstance(inp, int) else None


def head_geometry(config, parts: Sequence[str], block: nn.Module) -> tuple[int, int, int]:
    """(query heads, key-value heads, head_dim) from a Hugging Face ``config``, checked against the projections'
    shapes; a ``ValueError`` naming what does not fit."""
    heads = getattr(config, "num_attention_heads", None)
    if not heads:
        raise ValueError("modular attention needs config.num_attention_heads")
    kv = getattr(config, "num_key_value_heads", None) or heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    q, k, v, o = (_shape(block.get_submodule(p)) for p in parts)
    if (q[0], k[0], v[0], o[1]) != (heads * dim, kv * dim, kv * dim, heads * dim) or heads % kv:
        raise ValueError(f"modular attention: projections of shapes q {tuple(q)}, k {tuple(k)}, v {tuple(v)}, "
                         f"o {tuple(o)} do not fit {heads} heads, {kv} key-value heads of head_dim {dim}")
    return heads, kv, dim


def is_rotary(config) -> bool:
    """Whether queries and keys are rotated (RoPE, half-split pairs); partial rotary is refused (one line)."""
    partial = getattr(config, "partial_rotary_factor", 1.0) or 1.0
    if getattr(config, "rotary_dim", None) or partial != 1.0:
        raise ValueError("modular attention does not support partial rotary embeddings (rotary_dim / "
                         "partial_rotary_factor); use method 'lct'")
    return any(getattr(config, a, None) is not None for a in ("rope_theta", "rope_parameters", "rope_scaling"))


def _units(dim: int, rotary: bool) -> torch.Tensor:
    """The features of a head that are kept or dropped together: (units, features per unit)."""
    if rotary:
        if dim % 2:
            raise ValueError(f"rotary heads need an even head_dim, got {dim}")
        half = torch.arange(dim // 2)
        return torch.stack([half, half + dim // 2], 1)
    return torch.arange(dim).unsqueeze(1)


def qk_keep(Wq: torch.Tensor, Wk: torch.Tensor, C: torch.Tensor, heads: int, kv: int, dim: int, keep: int,
            rotary: bool) -> list[torch.Tensor]:
    """Per key-value head, the ``keep`` units (sorted, indices into :func:`_units`) whose part of the attention
    scores is largest, ``sum_h sqrt(E q_hu^2 E k_u^2)`` on inputs of second moment ``C``."""
    units = _units(dim, rotary)
    if not 1 <= keep <= len(units):
        raise ValueError(f"kept query-key units per head must be in [1, {len(units)}], got {keep}")
    C = C.double()
    energy = lambda W: torch.einsum("oi,ij,oj->o", W.double(), C, W.double()).clamp_min(0)  # E (W x)_o^2
    q, k = energy(Wq).view(heads, dim), energy(Wk).view(kv, dim)
    q_units, k_units = q[:, units].sum(-1), k[:, units].sum(-1)  # (heads, units), (kv, units)
    rep = heads // kv
    scores = [(q_units[g * rep:(g + 1) * rep] * k_units[g]).sqrt().sum(0) for g in range(kv)]
    return [s.topk(keep).indices.sort().values for s in scores]


def _vo_basis(Wo: torch.Tensor, Ca: torch.Tensor, group: range, dim: int):
    """(S, S^-1, eigenvalues, eigenvectors, largest first) of ``S (sum_h W_o^hT W_o^h) S`` for the query heads
    ``group`` of one key-value head: eigenvalue ``j`` is the output energy that feature ``j`` carries."""
    Wo, Ca = Wo.double(), Ca.double()
    C = sum(Ca[h * dim:(h + 1) * dim, h * dim:(h + 1) * dim] for h in group) / len(group)
    S, S_inv = whitener(C)
    G = sum(Wo[:, h * dim:(h + 1) * dim].T @ Wo[:, h * dim:(h + 1) * dim] for h in group)
    energy, vectors = torch.linalg.eigh(S @ G @ S)
    return S, S_inv, energy.flip(0).clamp_min(0) * len(group), vectors.flip(1)


def vo_gains(Wo: torch.Tensor, Ca: torch.Tensor, heads: int, kv: int, dim: int) -> torch.Tensor:
    """(head_dim,) the output energy the ``j``-th kept value feature carries, summed over the key-value heads
    (non-increasing: what keeping one more feature per head buys)."""
    rep = heads // kv
    return sum(_vo_basis(Wo, Ca, range(g * rep, (g + 1) * rep), dim)[2] for g in range(kv))


def vo_fit(Wv: torch.Tensor, bv: Optional[torch.Tensor], Wo: torch.Tensor, Ca: torch.Tensor, heads: int, kv: int,
           dim: int, keep: int) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """(value weight (kv*keep, in), its bias, output weight (out, heads*keep)) keeping ``keep`` value features per
    key-value head, fitted on ``Ca = E[a a^T]`` of the output projection's input (module docstring)."""
    if not 1 <= keep <= dim:
        raise ValueError(f"kept value features per head must be in [1, {dim}], got {keep}")
    rep, Wv, Wo = heads // kv, Wv.double(), Wo.double()
    values, biases, outputs = [], [], [None] * heads
    for g in range(kv):
        group = range(g * rep, (g + 1) * rep)
        S, S_inv, _, vectors = _vo_basis(Wo, Ca, group, dim)
        P = vectors[:, :keep]  # (dim, keep)
        into = P.T @ S_inv  # (keep, dim): values -> kept features
        values.append(into @ Wv[g * dim:(g + 1) * dim])
        biases.append(None if bv is None else into @ bv.double()[g * dim:(g + 1) * dim])
        for h in group:
            outputs[h] = Wo[:, h * dim:(h + 1) * dim] @ S @ P
    bias = None if bv is None else torch.cat(biases)
    return torch.cat(values), bias, torch.cat(outputs, 1)


def _first(width: int, keep: int, groups: int) -> torch.Tensor:
    """The first ``keep`` features of each of ``groups`` heads of ``width`` features."""
    return (torch.arange(groups).unsqueeze(1) * width + torch.arange(keep)).flatten()


def _moment(moments: Optional[dict], path: str, width: int) -> torch.Tensor:
    """The recorded input moment of ``path`` (the identity without calibration)."""
    C = moments.get(path) if moments else None
    return torch.eye(width, dtype=torch.float64) if C is None else C


@torch.no_grad()
def _slice(block: nn.Module, path: str, weight: torch.Tensor, bias, reads=None, writes=None, width=None) -> None:
    module = block.get_submodule(path)
    dtype = dense_weight(module)[0].dtype
    linear = make_dense(nn.Linear, weight.to(dtype), None if bias is None else bias.to(dtype))
    set_submodule(block, path, Sliced(linear, reads, writes, width))


@torch.no_grad()
def decompose_attention(model: nn.Module, container: str, targets: Sequence[str], fraction: float,
                        moments: Optional[dict], parts: Sequence[str] = ("qk", "vo"),
                        values: Optional[Sequence[int]] = None) -> dict[str, int]:
    """Keep ``fraction`` (in (0, 1]) of every block's query-key units and value features per head (``parts``: which
    of the two), fitted on the original network's ``moments`` (``{path: E[x x^T]}``, the output projection's input
    included; ``None``: the identity); ``values``: per block, the value features kept per head instead. Records a
    ``"heads"`` entry; returns ``{path: kept features per head}``. The model needs a Hugging Face ``config`` with the
    head counts; an attention of another layout raises ``ValueError``."""
    from .hf import install_save_pretrained
    from .record import Conversion, append, fingerprint

    if not 0 < fraction <= 1:
        raise ValueError(f"the attention's kept fraction must be in (0, 1], got {fraction}")
    if not parts or set(parts) - {"qk", "vo"}:
        raise ValueError(f"parts must be some of ('qk', 'vo'), got {parts}")
    blocks = model.get_submodule(container)
    found = attention_parts(blocks[0], targets)
    if found is None:
        raise ValueError(f"modular attention needs separate query/key/value/output linears "
                         f"({', '.join('/'.join(n) for n in ATTENTION_NAMES)}); the block's targets are "
                         f"{list(targets)}")
    config = getattr(model, "config", None)
    heads, kv, dim = head_geometry(config, found, blocks[0])
    q, k, v, o = found
    attention = q.rpartition(".")[0]
    if "qk" in parts and any(hasattr(blocks[0].get_submodule(attention) if attention else blocks[0], n)
                             for n in NORMED):
        raise ValueError("modular query-key selection cannot drop features normalised per head (q_norm / k_norm); "
                         "compress this model's queries and keys with lct")
    changed = [p for part, paths in (("qk", (q, k)), ("vo", (v, o))) if part in parts for p in paths]
    if not all(is_linear(blocks[0].get_submodule(p), exact=True) for p in changed):
        raise ValueError(f"modular attention cuts dense linears; {changed} are already converted")
    rotary = is_rotary(config) if "qk" in parts else False
    base_fingerprint = fingerprint(model)
    units = _units(dim, rotary)
    keep_units = max(1, int(fraction * len(units) + 1e-9))  # rounded down: the budget is never exceeded
    keep_values = max(1, int(fraction * dim + 1e-9))
    sizes, entries = {}, {}
    for i, block in enumerate(blocks):
        prefix = f"{container}.{i}."
        if "qk" in parts:
            (Wq, bq), (Wk, bk) = dense_weight(block.get_submodule(q)), dense_weight(block.get_submodule(k))
            kept = qk_keep(Wq, Wk, _moment(moments, prefix + q, Wq.shape[1]), heads, kv, dim, keep_units, rotary)
            features = [units[u].flatten().sort().values for u in kept]  # per kv head
            rows_k = torch.cat([g * dim + f for g, f in enumerate(features)])
            rows_q = torch.cat([h * dim + features[h // (heads // kv)] for h in range(heads)])
            for path, W, b, rows, width in ((q, Wq, bq, rows_q, heads * dim), (k, Wk, bk, rows_k, kv * dim)):
                _slice(block, path, W[rows], None if b is None else b[rows], writes=rows, width=width)
                sizes[prefix + path] = len(features[0])
        if "vo" in parts:
            (Wv, bv), (Wo, bo) = dense_weight(block.get_submodule(v)), dense_weight(block.get_submodule(o))
            r = keep_values if values is None else values[i]
            Wv2, bv2, Wo2 = vo_fit(Wv, bv, Wo, _moment(moments, prefix + o, Wo.shape[1]), heads, kv, dim, r)
            _slice(block, v, Wv2, bv2, writes=_first(dim, r, kv), width=kv * dim)
            _slice(block, o, Wo2, bo, reads=_first(dim, r, heads))
            sizes.update({prefix + v: r, prefix + o: r})
        for path in sizes:
            if path.startswith(prefix):
                module = model.get_submodule(path)
                entries[path] = {"in": module.linear.in_features, "out": module.linear.out_features,
                                 "bias": module.linear.bias is not None,
                                 "reads": None if module.reads is None else module.reads.numel(),
                                 "width": module.width}
    append(model, Conversion("heads", {"layers": entries}, ranks=sizes), base_fingerprint)
    install_save_pretrained(model)
    return sizes


@torch.no_grad()
def heads_plan(model: nn.Module, layers: dict[str, dict]) -> None:
    """Replace the recorded projections by empty :class:`Sliced` layers of the recorded sizes (for loading saved
    tensors: weights, biases and the kept positions)."""
    for path, e in layers.items():
        module = model.get_submodule(path)
        W = dense_weight(module)[0]
        linear = nn.Linear(e["in"], e["out"], bias=e["bias"], device=W.device, dtype=W.dtype)
        reads = None if e["reads"] is None else torch.zeros(e["reads"], dtype=torch.long)
        writes = None if e["width"] is None else torch.zeros(e["out"], dtype=torch.long)
        set_submodule(model, path, Sliced(linear, reads, writes, e["width"]))
