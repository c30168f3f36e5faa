"""``CompressConfig``: every setting of one compression run, validated, with a JSON round trip.

The defaults are the best recipe measured on SmolLM2-135M (BENCHMARKS.md): LCT factors in pivoted storage,
fitted to the layers' outputs (whitened SVD), refitted block by block on the compressed network's own inputs
(``sequential``), with the calibration moments shrunk toward their diagonals by an amount chosen on held-out
calibration text (``shrinkage="auto"``), and each block trained toward the original block's outputs right after
its refit (``recon_steps``, :mod:`lors.apply.reconstruct`; each token's error relative to its own norm for causal
LMs, summed errors for encoders: ``recon_loss``). For a causal LM kept below :data:`MODULAR_BELOW` of its
linears the default method is ``"modular"`` (MoDeGPT-style: whole MLP neurons kept and ``down`` refitted, value-output
features per head), which measured better there; above it, and for encoders, ``"lct"``.
:meth:`CompressConfig.fast` is the one-shot variant.

Settings that apply to one kind of model only (``"lm"``: causal LMs; ``"encoder"``: sentence encoders) default to
``None``; :meth:`CompressConfig.resolve` fills them for the kind at hand and refuses, with one line naming the
field, any that was set but cannot apply (an LM-only field on an encoder, ``group_size`` with ``lct``, ...).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Union

from ..apply.budget import ALLOCATIONS, FORMS
from ..apply.budget import METHODS as BUDGET_METHODS
from ..apply.modular import modular_applies
from ..apply.reconstruct import RECON_LOSSES, RECON_LR
from ..apply.sequential import RIDGE
from ..data.text.calibration import CALIBRATION_SOURCES, DISTILL_DATA
from ..engine.trainer import PRECISIONS, native_bf16
from ..errors import ConfigError

KINDS = ("lm", "encoder")
METHODS = (*BUDGET_METHODS, "modular")  # modular (MoDeGPT): MLP neurons, attention features per head
INITS = ("calibrated", "svd")
DISTILL_LOSSES = ("kl", "kl+hidden")
# DISTILL_DATA ("train", "extended"): encoders: the training sentences, or those + extra sentences + crops; causal
# LMs: the calibration sources, or those + the stdlib package folders' docstrings
LM_DISTILL_DATA = "train"
MODULAR_BELOW = 0.7  # LM budgets below this default to "modular" (SmolLM2 60 %: x2.00 / x1.73 -> x1.76 / x1.75;
                     # 50 %: x2.81 / x2.10 -> x2.19 / x2.07; at 80 % with 256 windows lct leads training-free,
                     # x1.186 / x1.146 against x1.192 / x1.170, and the two split after 470 distillation steps,
                     # x1.120 / x1.025 against x1.113 / x1.045; BENCHMARKS.md)
SENSITIVITY_DEFAULT = "sensitivity"  # loss-aware ranks (SmolLM2 80 %, recon: x1.40 -> x1.24 pydoc; MiniLM 50 %:
                                     # mean cosine 0.829 -> 0.885)
# block reconstruction by default (sequential lct / modular), steps per block and Adam's lr, per kind. Causal LMs:
# 128 at 1e-3 (SmolLM2 80 %: x1.57 -> x1.40 pydoc when it came in; 512 at 3e-4 gave x1.217 -> x1.208 training-free
# and x1.134 -> x1.133 after 470 distillation steps for 2.7x the time). Encoders: 1024 at 3e-4 (MiniLM 50 %: mean
# cosine / recall@10 0.932 / 77.4 % at 128 and 1e-3, 0.939 / 79.0 % at 512, 0.942 / 80.0 % at 1024; 17 -> 29 min;
# BENCHMARKS.md)
LM_RECON_STEPS, LM_RECON_LR = 128, RECON_LR  # RECON_LR (1e-3): the library functions' default too
# calibration windows of 256 tokens for causal LMs (SmolLM2 80 %, modular, training-free: x1.217 / x1.233 pydoc /
# Bible at 64, x1.205 / x1.176 at 128, x1.192 / x1.170 at 256; 29 -> 42 -> 67 min, peak 5.2 -> 8.7 GB; 60 %: x1.716 /
# x1.739 at 64, x1.692 / x1.619 at 256, but 24 of 36 samples loop against 17; BENCHMARKS.md)
LM_CALIBRATION_WINDOWS = 256
ENCODER_RECON_STEPS, ENCODER_RECON_LR = 1024, 3e-4
LM_DISTILL_LR = 5e-5  # SmolLM2 modular 80 %, 470 steps: x1.145 / x1.066 pydoc / Bible, 5 of 36 samples looping
                      # (3e-5: x1.149 / x1.083, 10 looping; BENCHMARKS.md); at 120 steps 1e-4 raised the KL to the
                      # original (0.263 -> 0.283 pydoc) where 3e-5 lowered it (-> 0.244)
# LM distillation precision where the CPU / GPU multiplies bfloat16 natively (SmolLM2 60 % / 80 %: 1.42x / 1.47x the
# tokens/s of fp32 on 2 AVX512-BF16 cores, training loss equal to 0.35 %; BENCHMARKS.md); fp32 elsewhere and for
# encoders (not measured)
LM_DISTILL_PRECISION = "bf16-mixed"
FAST_SHRINKAGE = 0.2  # what "auto" chose for SmolLM2 at 80 % and 60 % (BENCHMARKS.md)
LM_ONLY = ("calibration", "calibration_windows", "window", "distill_loss", "temperature", "distill_topk")
ENCODER_ONLY = ("calibration_sentences",)
# block reconstruction's error weighting (lors.apply.reconstruct): per token for causal LMs (SmolLM2 80 %, modular:
# pydoc x1.225 -> x1.217, Bible x1.248 -> x1.233), summed for encoders (MiniLM 50 %: 0.932 / 77.4 % vs 0.929 / 77.0 %;
# a post-LN encoder's block outputs are LayerNorm'd, so no token dominates the sum)
LM_RECON_LOSS, ENCODER_RECON_LOSS = "token", "total"
ENCODER_DISTILL_DATA = "extended"  # MiniLM 50 %, 1,000 steps: mean cosine 0.940 -> 0.946, recall@10 78.6 -> 79.4 %
CALIBRATION_SENTENCES = 4096  # MiniLM 50 %: 256 -> 0.885 mean cosine, 1024 -> 0.920, 4096 -> 0.931 (19 min, 6.9 GB);
                              # lors compress (run.py) takes all the training split holds (less 128) when fewer


class FieldError(ConfigError):
    """A bad value of one :class:`CompressConfig` field; ``field`` names it (the CLI turns it into a flag)."""

    def __init__(self, field: str, detail: str):
        super().__init__(f"{field} {detail}")
        self.field, self.detail = field, detail


@dataclass
class CompressConfig:
    """How to compress a pretrained model (see the module docstring for the defaults and kinds).

    Size: exactly one of ``budget`` (fraction of the stacked linears' parameters to keep, in (0, 1); for
    encoders, of the encoder's parameters), ``rank`` (one rank everywhere) or ``epsilon`` (relative output
    error per layer).
    """

    method: Optional[str] = None            # lct (per-layer factors), lors (shared + residuals), basis (LMs),
                                            # modular (MLP neurons + attention per head; budget). Default: modular
                                            # for causal-LM budgets under MODULAR_BELOW, else lct
    budget: Optional[float] = None
    rank: Optional[int] = None
    epsilon: Optional[float] = None
    form: Optional[str] = None              # factors | pivoted; default: pivoted for lct with a budget
    init: str = "calibrated"                # calibrated (fit the outputs) | svd (fit the weights)
    sequential: bool = True                 # refit block by block on the compressed network's inputs
    correct: bool = True                    # sequential: fit toward the original layers' outputs
    ridge: float = RIDGE                    # sequential: the correction's ridge, relative to mean(diag C)
    recon_steps: Optional[int] = None       # Adam steps per block toward the original's outputs after its
                                            # sequential refit (default LM_ / ENCODER_RECON_STEPS where it
                                            # applies, else 0)
    recon_lr: Optional[float] = None        # block reconstruction lr (default LM_ / ENCODER_RECON_LR)
    recon_loss: Optional[str] = None        # block reconstruction's error weighting: token | total (default
                                            # LMs token, encoders total; lors.apply.reconstruct)
    shrinkage: Union[float, str] = "auto"   # moments toward their diagonal: a number in [0, 1] or "auto"
    allocation: Optional[str] = None        # uniform | spectrum | sensitivity: how the budget spreads (default:
                                            # sensitivity for calibrated lct / modular budgets -- LMs: the loss's
                                            # gradient, encoders: the sentence embedding's --; else uniform)
    floor: float = 0.5                      # spectrum: every matrix keeps this share of its uniform rank
    group_size: Optional[int] = None        # lors / basis: share within runs of this many blocks
    fit_iterations: Optional[int] = None    # lors: alternating fits of shared weight and residuals (default 2)
    calibration: Optional[str] = None       # LMs: calibration text source (default mixed)
    calibration_windows: Optional[int] = None  # LMs: calibration windows (default LM_CALIBRATION_WINDOWS)
    window: Optional[int] = None            # LMs: tokens per window (default 256)
    calibration_sentences: Optional[int] = None  # encoders: calibration sentences (default: lors compress takes
                                                 # CALIBRATION_SENTENCES, or all its training split holds less 128)
    batch_size: Optional[int] = None        # calibration / distillation batch (default 4 LMs, 32 encoders)
    distill_steps: int = 0                  # end-to-end distillation after compressing (0: none)
    distill_loss: Optional[str] = None      # LMs: kl | kl+hidden (default kl)
    temperature: Optional[float] = None     # LMs: distillation temperature (default 1)
    lr: Optional[float] = None              # distillation lr (default LM_DISTILL_LR for LMs; 1e-4 for encoders:
                                            # on MiniLM 50 % 5e-4 lost 0.08 cosine in 100 steps, 1e-4 gained 0.01)
    distill_topk: Optional[int] = None      # LMs, kl: cache the teacher's top-k log-probs once (None: full logits)
    distill_data: Optional[str] = None      # encoders: "train" (the training sentences) or "extended" (default: with
                                            # pydoc's and the stdlib packages' sentences and two crops of each);
                                            # LMs: "train" (the calibration sources) or "extended" (and the stdlib
                                            # package folders' docstrings); default LM_DISTILL_DATA
    distill_precision: Optional[str] = None  # fp32 | bf16-mixed (default: bf16-mixed for LMs on hardware with native
                                             # bfloat16, see native_bf16; else fp32)
    seed: int = 0                           # encoders: which training sentences calibrate, their order, the crops;
                                            # causal LMs: the order of the distillation batches (0: as made; the
                                            # windows, the fits and the rest are fixed), refused without distillation

    def __post_init__(self):
        self.validate()

    @classmethod
    def fast(cls, **fields) -> "CompressConfig":
        """The one-shot recipe: no sequential refit, no shrinkage search (``shrinkage`` 0.2)."""
        return cls(**{"sequential": False, "shrinkage": FAST_SHRINKAGE, **fields})

    def validate(self) -> "CompressConfig":
        """Check every field on its own and against the others; raises :class:`FieldError`."""
        if self.method is not None:
            _choice(self, "method", METHODS)
        _choice(self, "init", INITS)
        if self.allocation is not None:
            _choice(self, "allocation", ALLOCATIONS)
        if self.form is not None:
            _choice(self, "form", FORMS)
        sizes = [n for n in ("budget", "rank", "epsilon") if getattr(self, n) is not None]
        if len(sizes) > 1:
            raise FieldError(sizes[1], f"cannot be given with {sizes[0]}: give one of budget, rank, epsilon")
        if self.budget is not None and not 0 < self.budget < 1:
            raise FieldError("budget", f"must be a fraction of the parameters in (0, 1), got {self.budget}")
        if self.epsilon is not None and not 0 < self.epsilon < 1:
            raise FieldError("epsilon", f"must be in (0, 1), got {self.epsilon}")
        for name, low in (("rank", 1), ("group_size", 2), ("fit_iterations", 1), ("calibration_windows", 1),
                          ("window", 2), ("calibration_sentences", 1), ("batch_size", 1), ("distill_steps", 0),
                           ("recon_steps", 0), ("distill_topk", 1)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise FieldError(name, f"must be an integer >= {low}, got {value!r}")
        for name in ("ridge", "lr", "temperature", "recon_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise FieldError(name, f"must be positive, got {value!r}")
        if not 0 <= self.floor <= 1:
            raise FieldError("floor", f"must be in [0, 1], got {self.floor}")
        if self.shrinkage != "auto" and (isinstance(self.shrinkage, (str, bool)) or not 0 <= self.shrinkage <= 1):
            raise FieldError("shrinkage", f"must be a number in [0, 1] or 'auto', got {self.shrinkage!r}")
        if self.calibration is not None:
            _choice(self, "calibration", CALIBRATION_SOURCES)
        if self.distill_loss is not None:
            _choice(self, "distill_loss", DISTILL_LOSSES)
        if self.distill_precision is not None:
            _choice(self, "distill_precision", PRECISIONS)
        if self.distill_data is not None:
            _choice(self, "distill_data", DISTILL_DATA)
        self._check_combinations()
        return self

    def _check_combinations(self) -> None:
        factored = self.method in (None, "lct", "modular")  # None: the default method, lct or modular (resolve picks)
        named = repr(self.method) if self.method else "the default method (lct or modular)"
        if self.method == "modular" and self.budget is None:
            raise FieldError("method", "'modular' keeps a fraction of every MLP's neurons: give budget")
        if self.form == "pivoted" and (not factored or self.budget is None):
            raise FieldError("form", "'pivoted' needs method 'lct' or 'modular' and a budget "
                             f"(got method {self.method!r}{'' if self.budget is not None else ', no budget'})")
        if self.group_size is not None and factored:
            raise FieldError("group_size", f"applies to methods 'lors' and 'basis' (shared weights), not {named}")
        if self.fit_iterations is not None and self.method != "lors":
            raise FieldError("fit_iterations", f"applies to method 'lors' only, not {named}")
        if self.method == "basis" and (self.budget is None or self.allocation not in (None, "uniform")):
            raise FieldError("method", "'basis' needs a budget and allocation 'uniform'")
        if self.method == "modular" and self.allocation == "spectrum":
            raise FieldError("allocation", "method 'modular' spreads its budget 'uniform' or by 'sensitivity'")
        if self.allocation not in (None, "uniform") and self.budget is None:
            raise FieldError("allocation", f"{self.allocation!r} spreads a budget; give budget")
        if self.allocation == "sensitivity" and self.init != "calibrated":
            raise FieldError("allocation", "'sensitivity' is measured on calibration batches: needs init 'calibrated'")
        if self.init == "svd" and (self.sequential or self.shrinkage not in (0, 0.0)):
            bad = "sequential" if self.sequential else "shrinkage"
            raise FieldError(bad, "needs init 'calibrated' (init 'svd' fits the weights, not calibration inputs); "
                             "set sequential=False, shrinkage=0")
        if self.distill_steps == 0:
            for name in ("lr", "distill_loss", "temperature", "distill_topk", "distill_precision", "distill_data"):
                if getattr(self, name) is not None:
                    raise FieldError(name, "applies to distillation only; set distill_steps > 0")
        if self.distill_topk is not None and self.distill_loss not in (None, "kl"):
            raise FieldError("distill_topk", f"caches logits for distill_loss 'kl', not {self.distill_loss!r}")
        if (self.recon_steps or 0) > 0 and (not factored or not self.sequential):
            bad = "sequential" if factored else "method"
            raise FieldError("recon_steps", "trains each block after its sequential refit: needs method 'lct' or "
                             f"'modular' and "
                             f"sequential=True (got method {self.method!r}, sequential={self.sequential}; {bad})")
        if self.recon_loss is not None:
            _choice(self, "recon_loss", RECON_LOSSES)
        for name in ("recon_lr", "recon_loss"):
            if getattr(self, name) is not None and self.recon_steps == 0:  # None: filled by resolve
                raise FieldError(name, "applies to block reconstruction only; set recon_steps > 0")

    def resolve(self, kind: str, model=None) -> "CompressConfig":
        """A copy with every kind-specific default filled for ``kind`` (``"lm"`` or ``"encoder"``); a field set
        for the other kind, or ``method='basis'`` on an encoder, is refused. ``model``: the model to compress, when
        known; the default method is ``"lct"`` for it if its MLPs are not ones ``"modular"`` can cut (a fused
        ``gate_up_proj``)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if self.budget is None and self.rank is None and self.epsilon is None:
            raise FieldError("budget", "is missing: give one of budget (e.g. 0.8), rank or epsilon")
        wrong = ENCODER_ONLY if kind == "lm" else LM_ONLY
        for name in wrong:
            if getattr(self, name) is not None:
                other = "sentence encoders" if kind == "lm" else "causal LMs"
                raise FieldError(name, f"applies to {other} only; this model is "
                                 f"{'a causal LM' if kind == 'lm' else 'an encoder'}")
        if kind == "lm" and self.seed != 0 and self.distill_steps == 0:
            raise FieldError("seed", f"orders the distillation batches of causal LMs and nothing else (their "
                             f"calibration windows are fixed, the fits closed-form): without distillation seed "
                             f"{self.seed} would repeat seed 0's run; set distill_steps > 0")
        if self.method is None:
            modular = (kind == "lm" and self.budget is not None and self.budget < MODULAR_BELOW
                       and self.init == "calibrated" and self.allocation != "spectrum"
                       and (model is None or modular_applies(model)))
            return dataclasses.replace(self, method="modular" if modular else "lct").resolve(kind)
        if kind == "encoder" and self.method == "basis":
            raise FieldError("method", "'basis' is for causal LMs; encoders take 'lct' or 'lors'")
        lm = kind == "lm"
        recon_steps, recon_lr, recon_loss = ((LM_RECON_STEPS, LM_RECON_LR, LM_RECON_LOSS) if lm else
                                             (ENCODER_RECON_STEPS, ENCODER_RECON_LR, ENCODER_RECON_LOSS))
        recon = self.recon_steps if self.recon_steps is not None else \
            recon_steps if self.sequential and self.method in ("lct", "modular") else 0
        for name in ("recon_lr", "recon_loss"):
            if getattr(self, name) is not None and recon == 0:
                raise FieldError(name, "applies to block reconstruction only; set recon_steps > 0")
        sensitive = self.budget is not None and self.init == "calibrated" and self.method in ("lct", "modular")
        pivoted = self.method in ("lct", "modular") and self.budget is not None
        defaults = dict(allocation=SENSITIVITY_DEFAULT if sensitive else "uniform",
                        form="pivoted" if pivoted else "factors",
                        recon_steps=recon, **(dict(recon_lr=recon_lr, recon_loss=recon_loss) if recon > 0 else {}),
                        batch_size=4 if lm else 32, **(dict(fit_iterations=2) if self.method == "lors" else {}),
                        **(dict(calibration="mixed", calibration_windows=LM_CALIBRATION_WINDOWS, window=256,
                                distill_loss="kl", temperature=1.0, lr=LM_DISTILL_LR,
                                distill_data=LM_DISTILL_DATA) if lm else
                           dict(lr=1e-4, distill_data=ENCODER_DISTILL_DATA)),
                        distill_precision=LM_DISTILL_PRECISION if lm and native_bf16("cpu") else "fp32")
        filled = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        if self.distill_steps == 0:
            filled = {k: v for k, v in filled.items()
                      if k not in ("lr", "distill_loss", "temperature", "distill_precision", "distill_data")}
        return dataclasses.replace(self, **filled)

    def setting(self) -> str:
        """A short name of the recipe, e.g. ``'lct pivoted sequential (80%)'``."""
        size = (f"{self.budget:.0%}" if self.budget is not None else f"rank {self.rank}" if self.rank is not None
                else f"epsilon {self.epsilon}")
        parts = [self.method or "default", self.form if self.form == "pivoted" else None,
                 "svd" if self.init == "svd" else None, "sequential" if self.sequential else "one-shot",
                 f"+ block recon {self.recon_steps}" + (f" ({self.recon_loss} loss)" if self.recon_loss else "")
                 if self.recon_steps else None,
                 f"+ {self.allocation} allocation" if self.allocation not in (None, "uniform") else None]
        return f"{' '.join(p for p in parts if p)} ({size})"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CompressConfig":
        """Read :meth:`to_dict`'s output; an unknown key is refused with the allowed ones."""
        if not isinstance(data, dict):
            raise ConfigError(f"a CompressConfig must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown CompressConfig field(s) {unknown}; allowed: {', '.join(sorted(known))}")
        return cls(**data)


def _choice(cfg: CompressConfig, name: str, allowed: tuple) -> None:
    if getattr(cfg, name) not in allowed:
        raise FieldError(name, f"must be one of {', '.join(map(repr, allowed))}; got {getattr(cfg, name)!r}")
