"""What was done to a model: a typed :class:`ConversionRecord`, one :class:`Conversion` per call.

Every :func:`lors.convert` and :func:`lors.lct` call appends one entry holding its own
options, so a model converted twice (different targets, different freezing) is described
exactly; :func:`lors.load` replays the entries in order. The record lives on the model as
``model.lors_conversion`` and is written to ``lors.json`` (and to training checkpoints)
through :meth:`ConversionRecord.to_dict`. This module is the only one that reads or writes it.

Format ``lors-2``: ``{"format", "base_fingerprint", "conversions": [{"kind", "config",
"stacks", "ranks", "skipped"}, ...]}``. Files of the older format ``lors-1`` (one shared
``config`` for all stacks, plus an ``lct`` rank map) are read as one LCT entry followed by
one LORS entry, which replays them as that format was replayed.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Literal, Optional

from torch import nn

FORMAT = "lors-2"
LEGACY_FORMATS = ("lors-1",)
KINDS = ("lors", "lct", "pivot", "neurons", "heads")


def fingerprint(model: nn.Module) -> str:
    """Hash of the model's state_dict keys and shapes: identifies a base architecture."""
    items = sorted((k, tuple(v.shape)) for k, v in model.state_dict().items())
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]


@dataclass
class StackEntry:
    """One LORS stack made by a conversion: which weight path of which container, and its shape."""

    container: str          # path of the ModuleList/Sequential of blocks, e.g. "encoder.layers"
    target: str             # weight path inside a block, e.g. "linear1" or "self_attn.in_proj"
    stack: str              # path of the LorsLinearStack, e.g. "encoder.lors_layers.linear1"
    ranks: list[int]        # residual rank per layer (per group)
    groups: list[int]       # residual groups per layer
    bias: bool
    layers: list[int]       # indices of the blocks in the stack
    sharing: str = "residual"  # "residual" (LorsLinearStack) or "basis" (BasisSharedStack)


@dataclass
class Conversion:
    """One call of :func:`lors.convert` (``kind="lors"``), :func:`lors.lct` (``kind="lct"``),
    :func:`lors.apply.lct.pivot` (``kind="pivot"``: factorised layers moved to pivoted storage, same ranks) or
    :func:`lors.apply.modular.decompose_mlps` (``kind="neurons"``: MLP linears cut to their kept neurons,
    ``ranks`` the kept sizes, ``config["readers"]`` the projections whose inputs shrank) or
    :func:`lors.apply.heads.decompose_attention` (``kind="heads"``: attention projections kept on some features per
    head, ``config["layers"]`` each one's sizes)."""

    kind: Literal["lors", "lct", "pivot", "neurons", "heads"]
    config: Optional[dict] = None                        # LorsConfig / LctConfig as a dict (None: a replayed plan)
    stacks: list[StackEntry] = field(default_factory=list)   # lors: the stacks made
    ranks: dict[str, int] = field(default_factory=dict)      # lct/pivot: {module path: rank} made by this call
    skipped: dict[str, str] = field(default_factory=dict)    # lct: {module path: why it stayed dense}

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"conversion kind must be one of {KINDS}, got {self.kind!r}")
        self.stacks = [s if isinstance(s, StackEntry) else StackEntry(**s) for s in self.stacks]


@dataclass
class ConversionRecord:
    """The conversions applied to a base architecture (identified by ``base_fingerprint``), in order."""

    base_fingerprint: str
    conversions: list[Conversion] = field(default_factory=list)

    @property
    def stacks(self) -> list[StackEntry]:
        return [s for c in self.conversions for s in c.stacks]

    @property
    def lct_ranks(self) -> dict[str, int]:
        return {p: r for c in self.conversions for p, r in c.ranks.items()}

    def to_dict(self) -> dict:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, source: str = "conversion record") -> "ConversionRecord":
        """Read ``to_dict``'s output (or the legacy ``lors-1`` layout); ``source`` names the file in errors."""
        if not isinstance(data, dict):
            raise ValueError(f"{source} must be a JSON object, got {type(data).__name__}")
        fmt = data.get("format", FORMAT)
        if fmt in LEGACY_FORMATS:
            return cls._from_legacy(data)
        if fmt != FORMAT:
            raise ValueError(f"{source} has format {fmt!r}; this lors reads {FORMAT!r} and {LEGACY_FORMATS}")
        try:
            return cls(data["base_fingerprint"], [Conversion(**c) for c in data.get("conversions", [])])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{source} is not a valid {FORMAT} record ({e})") from None

    @classmethod
    def _from_legacy(cls, data: dict) -> "ConversionRecord":
        # lors-1 was replayed as: LCT layers, LORS stacks, then the one recorded config's freezing
        conversions = []
        if data.get("lct"):
            conversions.append(Conversion("lct", None, ranks=dict(data["lct"]),
                                          skipped=dict(data.get("lct_skipped", {}))))
        if data.get("stacks"):
            stacks = [{**s, "layers": s.get("layers") or list(range(len(s["ranks"])))} for s in data["stacks"]]
            conversions.append(Conversion("lors", data.get("config"), stacks))
        return cls(data["base_fingerprint"], conversions)


def get_record(model: nn.Module) -> Optional[ConversionRecord]:
    """The model's record, or ``None`` if it was never converted."""
    return getattr(model, "lors_conversion", None)


def append(model: nn.Module, conversion: Conversion, base_fingerprint: str) -> ConversionRecord:
    """Add ``conversion`` to the model's record (created with ``base_fingerprint`` on the first call)."""
    record = get_record(model) or ConversionRecord(base_fingerprint)
    record.conversions.append(conversion)
    model.lors_conversion = record
    return record
