"""Train llmc's embedded ``tiny`` model: a ~3M-parameter byte-level Llama on Python's docs.

Usage::

    python tools/train_tiny.py --out llmc/models/tiny --steps 2000 --seed 0

Trains ``transformers.LlamaForCausalLM`` (GQA: 4 query heads, 2 KV heads) on the train split of
:mod:`llmc.data` with AdamW, linear warmup and cosine decay, on the CPU, and writes
``config.json``, ``model.safetensors``, ``tokenizer.json`` and ``training_log.json`` (loss curve,
command, seed, machine, wall time, final held-out perplexity) into ``--out``. Everything is
written to a temporary directory first and moved into place only when training succeeded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmc import data  # noqa: E402
from llmc.tokenizer import ByteTokenizer  # noqa: E402

# Every matrix dimension is a multiple of 64 (N:M sparsity, 16x16 FPGA blocks).
MODEL_CONFIG: dict[str, Any] = dict(
    vocab_size=ByteTokenizer.vocab_size,
    hidden_size=256,
    intermediate_size=704,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=1024,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    p.add_argument("--ctx", type=int, default=256, help="context length in tokens (bytes)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr / peak lr")
    p.add_argument("--warmup", type=int, default=100, help="linear warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=100, help="steps between loss-curve points")
    p.add_argument(
        "--eval-tokens", type=int, default=16384, help="held-out tokens for curve points"
    )
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument(
        "--time-steps", type=int, default=0, help="only time this many steps, write nothing"
    )
    return p.parse_args(argv)


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Learning-rate multiplier at ``step``: linear warmup, then cosine to ``min_lr_ratio``."""
    if step < args.warmup:
        return (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1)))


@torch.no_grad()
def mean_nll(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token negative log-likelihood (nats) over all predicted tokens of ``windows``."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, windows.shape[0], batch_size):
        x = windows[i : i + batch_size]
        logits = model(input_ids=x).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        )
        total += nll.item()
        count += x[:, 1:].numel()
    model.train()
    return total / count


def build_model(seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**MODEL_CONFIG, dtype="float32")
    return LlamaForCausalLM(config).float()


def train(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    model = build_model(args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, args))
    batches = data.token_batches(args.batch_size, args.ctx, seed=args.seed)
    curve_windows = data.eval_windows(args.ctx, max_tokens=args.eval_tokens)

    if args.time_steps:
        t0 = time.perf_counter()
        for _ in range(args.time_steps):
            loss = model(input_ids=(x := next(batches)), labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        dt = (time.perf_counter() - t0) / args.time_steps
        te = time.perf_counter()
        mean_nll(model, curve_windows)
        print(
            f"{n_params} params; {dt:.3f} s/step at batch {args.batch_size}x{args.ctx}; "
            f"curve eval {time.perf_counter() - te:.1f} s"
        )
        return {}

    curve: list[dict[str, float]] = []
    window_losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(args.steps), disable=not sys.stderr.isatty(), desc="train", unit="step")
    model.train()
    for step in bar:
        x = next(batches)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        window_losses.append(loss.item())
        done = step + 1
        if done % args.eval_every == 0 or done == args.steps:
            point = {
                "step": done,
                "lr": opt.param_groups[0]["lr"],
                "train_loss": sum(window_losses) / len(window_losses),
                "heldout_loss": mean_nll(model, curve_windows),
                "elapsed_s": round(time.perf_counter() - start, 1),
            }
            window_losses.clear()
            curve.append(point)
            bar.set_postfix(
                train=f"{point['train_loss']:.3f}", heldout=f"{point['heldout_loss']:.3f}"
            )
            if not sys.stderr.isatty():
                print(
                    f"step {done}/{args.steps} train {point['train_loss']:.4f} "
                    f"heldout {point['heldout_loss']:.4f} ({point['elapsed_s']} s)",
                    flush=True,
                )
    train_s = time.perf_counter() - start

    heldout = data.eval_windows(args.ctx)
    final_nll = mean_nll(model, heldout)
    train_nll = mean_nll(
        model, data.eval_windows(args.ctx, split="train", max_tokens=len(heldout) * args.ctx)
    )
    return {
        "model": model,
        "log": {
            "command": " ".join(["python", "tools/train_tiny.py", *argv]),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "seed": args.seed,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "python": platform.python_version(),
            },
            "torch_version": torch.__version__,
            "transformers_version": __import__("transformers").__version__,
            "parameters": n_params,
            "tokens_seen": args.steps * args.batch_size * args.ctx,
            "train_tokens": int(data.corpus_tokens("train").numel()),
            "heldout_tokens": int(data.corpus_tokens("heldout").numel()),
            "heldout_sha256": data.heldout_sha256(),
            "curve_eval_tokens": int(curve_windows.numel()),
            "wall_time_s": round(train_s, 1),
            "loss_curve": curve,
            "final": {
                "heldout_windows": int(heldout.shape[0]),
                "heldout_eval_tokens": int(heldout.shape[0] * (args.ctx - 1)),
                "heldout_loss": final_nll,
                "heldout_perplexity": math.exp(final_nll),
                "heldout_bits_per_byte": final_nll / math.log(2),
                "train_loss": train_nll,
                "train_perplexity": math.exp(train_nll),
            },
        },
    }


def save(out: Path, model: torch.nn.Module, log: dict[str, Any]) -> None:
    """Write the model directory atomically per file: stage everything, then move into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as tmp:
        stage = Path(tmp)
        model.save_pretrained(stage, safe_serialization=True)
        ByteTokenizer().save(stage)
        (stage / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
        for f in sorted(stage.iterdir()):
            f.chmod(0o644)
            os.replace(f, out / f.name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.ctx < 2 or args.steps < 1 or args.warmup < 0:
        print("error: need --ctx >= 2, --steps >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    if not sys.stderr.isatty():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    result = train(args, argv)
    if not result:
        return 0
    log = result["log"]
    save(args.out, result["model"], log)
    final = log["final"]
    print(
        f"wrote {args.out}: {log['parameters']} params, held-out ppl "
        f"{final['heldout_perplexity']:.3f} ({final['heldout_bits_per_byte']:.3f} bits/byte), "
        f"{log['wall_time_s']} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
