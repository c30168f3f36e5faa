"""lors.distill: the student approaches the teacher; an interrupted run resumes exactly."""
import copy

import pytest
import torch
from torch import nn

import lors
from lors.tasks.distill import distill, distill_loss

pytestmark = pytest.mark.filterwarnings("ignore:LORS stack")


class Encoder(nn.Module):
    """Token encoder returning (B, T, D), with dropout so that resuming must restore randomness."""

    def __init__(self, d=16, layers=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Dropout(0.1),
                                                   nn.Linear(2 * d, d)) for _ in range(layers)])

    def forward(self, input_ids, attention_mask=None):
        x = input_ids
        for b in self.blocks:
            x = x + b(x)
        return x


def batches(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        mask = torch.ones(8, 5, dtype=torch.long)
        mask[:, 4:] = 0
        out.append({"input_ids": torch.randn(8, 5, 16, generator=g), "attention_mask": mask})
    return out


def student_teacher():
    teacher = Encoder().eval()
    student = lors.convert(copy.deepcopy(teacher), lors.LorsConfig(rank=2))
    return student, teacher


def test_distill_loss_definitions():
    t = torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert distill_loss(t, t, mask).item() == pytest.approx(0.0, abs=1e-6)
    s = t.clone()
    s[0, 2] += 100.0  # a masked-out token does not count
    assert distill_loss(s, t, mask, "mse").item() == pytest.approx(0.0, abs=1e-6)
    assert distill_loss(-t, t, None, "cosine").item() == pytest.approx(2.0, abs=1e-5)
    with pytest.raises(ValueError, match="loss"):
        distill(*student_teacher(), batches(), steps=1, loss="kld")


def test_distillation_reduces_the_student_teacher_loss():
    student, teacher = student_teacher()
    data = batches()

    def gap(model):
        model.eval()
        with torch.no_grad():
            return {"gap": sum(distill_loss(model(**b), teacher(**b), b["attention_mask"]).item() for b in data)}

    before = gap(student)["gap"]
    history = distill(student, teacher, data, steps=60, lr=3e-3, checkpoint_every=20, evaluate=gap,
                      progress=False, log=lambda s: None)
    assert [h["step"] for h in history] == [20, 40, 60]
    assert history[-1]["gap"] < 0.5 * before
    assert all(not p.requires_grad for p in teacher.parameters())


def test_the_student_trains_without_dropout_unless_asked():
    """By default the student runs in eval mode, as the teacher does: the first step's loss is the deterministic
    gap; with ``dropout=True`` it is the gap under dropout (here p = 0.9, far from it)."""
    data = batches(1)
    b = data[0]
    losses = {}
    for dropout in (False, True):
        student, teacher = student_teacher()
        for m in student.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.9
        with torch.no_grad():
            losses["eval"] = distill_loss(student.eval()(**b), teacher(**b), b["attention_mask"]).item()
        history = distill(student, teacher, data, steps=1, lr=1e-3, checkpoint_every=1, progress=False,
                          log=lambda s: None, dropout=dropout)
        losses[dropout] = history[0]["train_loss"]
        assert not student.training
    assert losses[False] == pytest.approx(losses["eval"], rel=1e-5)
    assert abs(losses[True] - losses["eval"]) > 0.1 * losses["eval"]


def test_resume_continues_exactly(tmp_path):
    data = batches()
    student, teacher = student_teacher()
    full = distill(student, teacher, data, steps=40, lr=3e-3, checkpoint_every=10, progress=False,
                   log=lambda s: None, run_dir=tmp_path / "full", dropout=True)  # dropout: randomness to restore
    # interrupted after 20 steps: a run with steps=40 whose process stopped after two chunks
    s2, t2 = student_teacher()
    with pytest.raises(_Stop):
        distill(s2, t2, data, steps=40, lr=3e-3, checkpoint_every=10, progress=False, log=lambda s: None,
                run_dir=tmp_path / "cut", forward=_stop_after(25), dropout=True)
    s3, t3 = student_teacher()
    resumed = distill(s3, t3, data, steps=40, lr=3e-3, checkpoint_every=10, progress=False, log=lambda s: None,
                      run_dir=tmp_path / "cut", resume=True, dropout=True)
    drop_time = lambda rows: [{k: v for k, v in r.items() if k not in ("epoch_time", "samples_per_s")} for r in rows]
    assert drop_time(resumed) == drop_time(full)
    for (n, a), (_, b) in zip(student.state_dict().items(), s3.state_dict().items()):
        assert torch.equal(a, b), n
    # a student converted differently is refused
    other = lors.convert(copy.deepcopy(teacher), lors.LorsConfig(rank=3))
    with pytest.raises(ValueError, match="converted differently"):
        distill(other, teacher, data, steps=40, run_dir=tmp_path / "cut", resume=True, progress=False)


class _Stop(Exception):
    pass


def _stop_after(n_calls):
    """A forward that raises once the student has run ``n_calls`` training steps (simulates a kill)."""
    from lors.tasks.distill import outputs

    calls = {"student": 0}

    def forward(model, batch):
        if model.training:
            calls["student"] += 1
            if calls["student"] > n_calls:
                raise _Stop
        return outputs(model, batch)

    return forward


def test_bf16_mixed_trains_like_fp32_and_keeps_fp32_weights():
    """bf16-mixed runs the forward and backward matmuls in bfloat16: the first step's loss is the fp32 loss to
    bfloat16's precision (not the same number), the weights and gradients stay float32, and it learns as fp32 does."""
    data = batches(4)
    runs = {}
    for precision in ("fp32", "bf16-mixed"):
        student, teacher = student_teacher()
        history = distill(student, teacher, data, steps=40, lr=3e-3, checkpoint_every=1, progress=False,
                          log=lambda s: None, precision=precision)
        runs[precision] = [h["train_loss"] for h in history]
        assert all(p.dtype == torch.float32 for p in student.parameters())
    fp32, bf16 = runs["fp32"], runs["bf16-mixed"]
    assert fp32[0] != bf16[0] and bf16[0] == pytest.approx(fp32[0], rel=0.02)
    assert bf16[-1] < 0.5 * bf16[0] and bf16[-1] == pytest.approx(fp32[-1], rel=0.1)
    with pytest.raises(ValueError, match="precision must be one of"):
        distill(*student_teacher(), data, steps=1, precision="fp16")
