"""``llmc bench``'s measurement: a batch of prompts per request, greedy decode, best of N rounds.

With ``batch == 1`` a round is :func:`llmc.runtime.lm.generate` (so FFN-skip counters and token
pruning's kept lengths are measured as ``llmc run`` sees them). With ``batch = B > 1`` a round is
one prefill call on ``[B, prompt]`` and ``new_tokens - 1`` decode calls on ``[B, 1]``, every
sequence decoded greedily against its own cache; the B prompts differ (each a different
arithmetic sequence of ids), so no sequence repeats another.

Rates: ``prefill_tokens_per_s`` counts every prompt token of the batch; ``decode_tokens_per_s``
is per sequence (decode steps per second: what one user sees) and
``decode_tokens_per_s_total`` the aggregate over the batch (``B`` x that).

Example::

    from llmc.runtime.bench import bench
    r = bench(lm, batch=4, prompt_len=32, new_tokens=16, repeat=3)
    r.decode_tokens_per_s, r.decode_tokens_per_s_total
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from llmc.errors import LlmcError
from llmc.runtime.lm import LanguageModel, generate, kv_lengths


@dataclass
class BenchResult:
    batch: int
    prompt_tokens: int  # per sequence
    new_tokens: int  # per sequence
    prefill_s: float
    decode_s: float
    steps: int
    kv_after_prefill: list[int] = field(default_factory=list)
    #: the tokens each sequence generated (greedy)
    tokens: list[list[int]] = field(default_factory=list)

    @property
    def prefill_tokens_per_s(self) -> float:
        n = self.batch * self.prompt_tokens
        return n / self.prefill_s if self.prefill_s > 0 else float("inf")

    @property
    def decode_tokens_per_s(self) -> float:
        """Per sequence: decode steps per second."""
        return max(self.steps, 1) / self.decode_s if self.decode_s > 0 else float("inf")

    @property
    def decode_tokens_per_s_total(self) -> float:
        return self.batch * self.decode_tokens_per_s

    @property
    def decode_ms_per_step(self) -> float:
        return 1000.0 * self.decode_s / max(self.steps, 1)

    @property
    def prefill_token_fraction(self) -> float:
        k = self.kv_after_prefill
        return sum(k) / (len(k) * self.prompt_tokens) if k and self.prompt_tokens else 1.0


def bench_prompts(vocab: int, batch: int, prompt_len: int) -> list[list[int]]:
    """``batch`` distinct prompts of ``prompt_len`` ids below ``min(vocab, 256)`` (sequence 0 is
    the prompt ``llmc bench`` always used)."""
    v = min(vocab, 256)
    return [[(i * (7 + 2 * b) + 3 + b) % v for i in range(prompt_len)] for b in range(batch)]


def check_batch(lm: LanguageModel, batch: int, where: str) -> None:
    """Refuse, in one line, a batch the model cannot run in one call."""
    most = getattr(lm, "max_batch", 0)
    if most and batch > most:
        raise LlmcError(
            f"{where}: --batch {batch}: this artifact runs {most} sequence(s) per call "
            f"({getattr(lm, 'device', 'its device')}); use --batch {most}"
        )


def run_batch(lm: LanguageModel, prompts: list[list[int]], new_tokens: int) -> BenchResult:
    """One round: prefill every prompt in one call, then greedy decode (see module doc)."""
    b, n = len(prompts), len(prompts[0])
    if n + new_tokens > lm.max_positions:
        raise LlmcError(
            f"prompt ({n} tokens) + {new_tokens} new tokens exceed the model's "
            f"{lm.max_positions} positions"
        )
    if b == 1:
        r = generate(lm, prompts[0], new_tokens)
        return BenchResult(
            1, r.prompt_tokens, r.new_tokens, r.prefill_s, r.decode_s, len(r.step_s),
            list(r.kv_after_prefill), [list(r.tokens)],
        )  # fmt: skip
    saved = lm.decode_start
    lm.decode_start = n
    try:
        ids = torch.tensor(prompts, dtype=torch.int64)
        pos = torch.arange(n, dtype=torch.int64).expand(b, n).contiguous()
        t0 = time.perf_counter()
        logits, past = lm.forward_last(ids, pos, lm.empty_past(b))
        prefill_s = time.perf_counter() - t0
        kept = kv_lengths(past)
        nxt = torch.argmax(logits[:, -1].to(torch.float32), dim=-1)
        out = [nxt]
        decode_s, steps = 0.0, 0
        for i in range(new_tokens - 1):
            t = time.perf_counter()
            logits, past = lm.forward(
                nxt[:, None].to(torch.int64), torch.full((b, 1), n + i, dtype=torch.int64), past
            )
            decode_s += time.perf_counter() - t
            steps += 1
            nxt = torch.argmax(logits[:, -1].to(torch.float32), dim=-1)
            out.append(nxt)
    finally:
        lm.decode_start = saved
    tokens = torch.stack(out, dim=1).tolist()
    return BenchResult(b, n, new_tokens, prefill_s, decode_s, steps, kept, tokens)


def bench(
    lm: LanguageModel,
    *,
    batch: int = 1,
    prompt_len: int = 128,
    new_tokens: int = 64,
    repeat: int = 3,
    on_round: Callable[[int], None] | None = None,
) -> BenchResult:
    """The best (least decode time) of ``repeat`` rounds, after a short warm-up round."""
    prompts = bench_prompts(lm.vocab_size, batch, prompt_len)
    run_batch(lm, [p[: min(8, prompt_len)] for p in prompts], 2)  # lazy init, kernel loading
    best: BenchResult | None = None
    for _ in range(repeat):
        lm.reset_skip_stats()  # greedy on fixed prompts: every round skips alike
        r = run_batch(lm, prompts, new_tokens)
        if best is None or r.decode_s < best.decode_s:
            best = r
        if on_round is not None:
            on_round(1)
    assert best is not None
    return best
