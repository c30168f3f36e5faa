"""What LORS saves at scale, measured in one run: state bytes, peak memory, communication and step time.

A GPT with GPT-2-small widths (d=768, 12 blocks, 12 heads, MLP 3072; byte vocabulary by default, so the
numbers are the blocks', not a 50k-token embedding's) trained by AdamW over ``lors.param_groups``, as
dense, LORS at two residual ranks and LCT. Per variant, each in a fresh process:

* ``single``: bytes of parameters, gradients and AdamW state after a step; peak process memory of the
  training steps (RSS above the process's size before the model was built; ``max_memory_allocated`` on
  CUDA); median step time.
* ``ddp`` (2 processes): bytes all-reduced per step, counted by a DDP communication hook; step time.
* ``fsdp`` (2 processes, :func:`lors.fsdp_wrap`): bytes all-gathered and reduce-scattered per step,
  counted by FSDP2 custom collectives; per-rank state bytes; step time.

Ratios are to dense in the same run.

    python benchmarks/bench_scale.py [--dim 768 --depth 12 --batch 4 --seq 128 --steps 3]
        [--variants dense,lors32,lors128,lct192] [--modes single,ddp,fsdp] [--device cpu|cuda] [--bf16]
        [--out docs/scale.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve()


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(variant: str, args):
    """``dense``, ``lors<R>`` (residual rank R) or ``lct<R>`` (factor rank R)."""
    from lors.models.gpt import GPT
    kind = variant.rstrip("0123456789")
    rank = int(variant[len(kind):] or 0)
    if kind not in ("dense", "lors", "lct") or (kind != "dense" and rank < 1):
        raise SystemExit(f"--variants: '{variant}' is not dense, lors<rank> or lct<rank>")
    return GPT(vocab_size=args.vocab, block_size=args.seq, dim=args.dim, depth=args.depth, heads=args.heads,
               mlp_dim=args.mlp, variant=kind, rank=rank or 8, lct_rank=rank or None)


def local_bytes(t: torch.Tensor) -> int:
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def state_bytes(model, optimizer) -> dict:
    params = list(model.parameters())
    return {"param_bytes": sum(local_bytes(p) for p in params),
            "grad_bytes": sum(local_bytes(p.grad) for p in params if p.grad is not None),
            "optim_bytes": sum(local_bytes(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))}


def train_steps(model, optimizer, args, device, after_warmup=lambda: None) -> list[float]:
    """One warm-up step then ``args.steps`` timed steps on random tokens; returns the step times."""
    g = torch.Generator().manual_seed(1234 + int(os.environ.get("RANK", 0)))
    times = []
    for step in range(args.steps + 1):
        x = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step == 0:
            after_warmup()
        else:
            times.append(time.perf_counter() - t0)
    return times


class Counter:
    """Bytes per collective kind, reset after the warm-up step."""

    def __init__(self):
        self.bytes: dict[str, int] = {}

    def add(self, kind: str, nbytes: int) -> None:
        self.bytes[kind] = self.bytes.get(kind, 0) + nbytes

    def reset(self) -> None:
        self.bytes = {}


def count_ddp(model, counter: Counter):
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel

    def hook(state, bucket):
        counter.add("all_reduce_bytes", bucket.buffer().numel() * bucket.buffer().element_size())
        return default_hooks.allreduce_hook(state, bucket)

    ddp = DistributedDataParallel(model)
    ddp.register_comm_hook(None, hook)
    return ddp


def count_fsdp(model, counter: Counter):
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp._fully_shard._fsdp_collectives import DefaultAllGather, DefaultReduceScatter

    class Gather(DefaultAllGather):
        def __call__(self, output_tensor, input_tensor, group, async_op=False):
            counter.add("all_gather_bytes", output_tensor.numel() * output_tensor.element_size())
            return super().__call__(output_tensor, input_tensor, group, async_op)

    class Scatter(DefaultReduceScatter):
        def __call__(self, output_tensor, input_tensor, group, op, async_op=False):
            counter.add("reduce_scatter_bytes", input_tensor.numel() * input_tensor.element_size())
            return super().__call__(output_tensor, input_tensor, group, op, async_op)

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_custom_all_gather(Gather())
            m.set_custom_reduce_scatter(Scatter())
    return model


def worker(args) -> None:
    """One measurement in this process (or this rank): writes a JSON row to ``args.result``."""
    import lors
    device = torch.device(args.device)
    rank, world = 0, 1
    if args.mode != "single":
        import torch.distributed as dist
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            torch.cuda.set_device(rank)
            device = torch.device("cuda", rank)
    base = rss_mb()
    torch.manual_seed(0)
    model = build(args.variant, args).to(device)
    counter = Counter()
    if args.mode == "fsdp":
        count_fsdp(lors.fsdp_wrap(model), counter)
    trained = count_ddp(model, counter) if args.mode == "ddp" else model
    optimizer = torch.optim.AdamW(lors.param_groups(model, 1e-4, 0.05))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = train_steps(trained, optimizer, args, device, after_warmup=counter.reset)
    row = {"variant": args.variant, "mode": args.mode, "world": world, "params": lors.count_parameters(model),
           **state_bytes(model, optimizer), "step_s": statistics.median(times),
           **{k: v / args.steps for k, v in counter.bytes.items()}}
    if device.type == "cuda":
        row["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        row["peak_mb"], row["base_mb"] = peak_rss_mb() - base, base
    if rank == 0:
        Path(args.result).write_text(json.dumps(row))
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, variant: str, mode: str) -> dict:
    """Run one measurement in a fresh process (two under torchrun for ddp/fsdp); returns its row."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "row.json"
        forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                     if k in ("dim", "depth", "heads", "mlp", "vocab", "batch", "seq", "steps", "device")]
        own = [str(HERE), "--worker", f"--variant={variant}", f"--mode={mode}", f"--result={result}", *forwarded]
        own += ["--bf16"] if args.bf16 else []
        threads = args.threads if mode == "single" else max(1, args.threads // 2)
        if mode == "single":
            cmd = [sys.executable, *own]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                   "--master_addr=127.0.0.1", f"--master_port={free_port()}", *own]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise SystemExit(f"{variant}/{mode} failed:\n{r.stderr[-3000:]}")
        return json.loads(result.read_text())


def table(rows: list[dict]) -> str:
    """Ratios to dense per mode."""
    keys = ["params", "param_bytes", "grad_bytes", "optim_bytes", "peak_mb", "step_s", "all_reduce_bytes",
            "all_gather_bytes", "reduce_scatter_bytes"]
    lines = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        sub = [r for r in rows if r["mode"] == mode]
        dense = next((r for r in sub if r["variant"] == "dense"), None)
        cols = [k for k in keys if k in sub[0]]
        lines.append(f"\n[{mode}] " + " | ".join(["variant"] + cols))
        for r in sub:
            cells = []
            for k in cols:
                v = r[k]
                text = f"{v / 2**20:.1f}MB" if k.endswith("bytes") else f"{v:.3f}s" if k == "step_s" else (
                    f"{v:.0f}MB" if k == "peak_mb" else f"{v:,}")
                if dense is not None and r is not dense and dense.get(k):
                    text += f" (x{v / dense[k]:.2f})"
                cells.append(text)
            lines.append(" | ".join([r["variant"]] + cells))
    return "\n".join(lines)


def add_gpt_args(ap: argparse.ArgumentParser) -> None:
    """The GPT's widths (GPT-2 small by default, byte vocabulary); bench_inference.py takes the same."""
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--mlp", type=int, default=3072)
    ap.add_argument("--vocab", type=int, default=256)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_gpt_args(ap)
    ap.add_argument("--batch", type=int, default=4, help="sequences per step (per process under ddp/fsdp)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--variants", default="dense,lors32,lors128,lct192")
    ap.add_argument("--modes", default="single,ddp,fsdp")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward pass")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads in all (split by ranks)")
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    modes = args.modes.split(",")
    bad = set(modes) - {"single", "ddp", "fsdp"}
    if bad:
        raise SystemExit(f"--modes: {sorted(bad)} not among single, ddp, fsdp")
    print(f"GPT d={args.dim}, {args.depth} blocks, mlp {args.mlp}, vocab {args.vocab}; batch {args.batch}x{args.seq} "
          f"per process, {args.steps} timed steps, {args.device}{' bf16' if args.bf16 else ''}", flush=True)
    rows = []
    for mode in modes:
        for variant in args.variants.split(","):
            rows.append(launch(args, variant, mode))
            print(f"  {mode:6s} {variant:8s} " + json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                            for k, v in rows[-1].items()}), flush=True)
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k not in
                                                       ("worker", "variant", "mode", "result")}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
