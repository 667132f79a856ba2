"""Running language-model graphs: the LM ABI, KV-cache generation and perplexity.

Every executable form of a model (the reference interpreter over an IR graph, a compiled TVM
artifact) implements :class:`LanguageModel`: one call runs ``seq`` new tokens at absolute
``positions`` on top of a KV cache and returns the logits and the grown cache. The graph ABI
(docs/frontend.md, "The LM ABI"; checked by :func:`llmc.ir.structure.check_lm_abi`) is:

- inputs ``input_ids: i64[batch, seq]``, ``positions: i64[batch, seq]``, then per layer
  ``past_k_{i}``, ``past_v_{i}``: ``[batch, kv_heads, past_i, head_dim]``;
- outputs ``logits: [batch, rows, vocab]``, then per layer ``present_k_{i}``, ``present_v_{i}``:
  ``[batch, kv_heads, past_i + rows_i, head_dim]``.

Without token pruning (``llmc-lm-v1``) every layer's ``past_i`` is one ``past`` and ``rows_i`` is
``seq``. With it (``llmc-lm-v2``) a layer keeps only the rows its ``gather_rows`` kept, so the cache
(:data:`KV`) carries a length per layer; positions stay the tokens' original positions, so the
next token's position is the number of tokens seen, never a cache length.

Generation is prefill (the whole prompt in one call) then decode (one token per call). Its
prefill needs the last row's logits only: :meth:`LanguageModel.forward_last` returns
``[batch, 1, vocab]`` and a runner computes the head for that row alone (the graph's last-row
variant, :mod:`llmc.ir.lastrow`; ``prefill_last`` in a compiled artifact). Perplexity
(:func:`evaluate`) needs every row and calls :meth:`LanguageModel.forward`.

**Decode start.** A graph may declare the optional scalar input ``decode_start: i64[]`` after the
KV inputs (``ffn-skip`` does): the position of the first generated token. A runner supplies
``lm.decode_start`` (:func:`generate` sets it to the prompt length, :func:`evaluate` to the
prompt of its windows); unset, the graph gets :data:`~llmc.ir.structure.NO_DECODE` and runs as
the dense model. Rows at positions ``>= decode_start`` are *decode rows*.

**FFN-skip statistics.** A graph that skips FFN blocks (``ffn-skip``) has the optional LM-ABI
output ``ffn_skipped: bool[batch, seq, layers]`` (:data:`~llmc.ir.structure.LM_OPTIONAL_OUTPUTS`);
every runner (:class:`InterpLM`, the TVM runner, the FPGA runner) feeds it to its
:class:`SkipCounter`, which counts the FFN blocks skipped per layer among decode rows:
``lm.skip_stats()`` gives ``ffn_skip_fraction`` = skipped blocks / (decode rows x layers), i.e.
the fraction of the dense model's decode FFN blocks that did not run, and ``ffn_skip_histogram``
(skips per layer); ``lm.last_skips`` is the last call's ``[batch, seq, layers]`` decisions.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from llmc.errors import LlmcError
from llmc.ir.graph import Graph
from llmc.ir.structure import NO_DECODE, check_kv_lengths, check_lm_abi
from llmc.ir.types import to_torch_dtype

#: The KV cache: per layer ``(k, v)``, each ``[batch, kv_heads, past_i, head_dim]``; ``past_i`` may
#: differ between layers (token pruning, ``llmc-lm-v2``).
KV = list[tuple[torch.Tensor, torch.Tensor]]


def kv_lengths(past: KV) -> list[int]:
    """Positions cached per layer (``past_i``)."""
    return [int(k.shape[2]) for k, _ in past]


class SkipCounter:
    """FFN-skip counters of a runner whose graph has the ``ffn_skipped`` output (see the module
    docstring); a runner calls :meth:`count_skips` with that output after each call."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self.last_skips: torch.Tensor | None = None
        self.reset()

    def reset(self) -> None:
        self.skips = [0] * self.num_layers
        self.decode_rows = 0

    def count(self, mask: torch.Tensor, positions: torch.Tensor, start: int) -> None:
        """``mask``: the call's ``ffn_skipped`` output; rows at positions ``>= start`` decode."""
        mask = mask.to("cpu", torch.bool)
        self.last_skips = mask
        self.decode_rows += int((positions.cpu() >= start).sum())
        for i, c in enumerate(mask.sum((0, 1)).tolist()):
            self.skips[i] += int(c)

    def stats(self) -> dict[str, Any]:
        total = self.decode_rows * self.num_layers
        return {
            "ffn_skip_fraction": sum(self.skips) / total if total else 0.0,
            "ffn_skip_histogram": list(self.skips),
            "ffn_decode_rows": self.decode_rows,
        }


class LanguageModel(abc.ABC):
    """A model that runs new tokens on top of a KV cache."""

    meta: dict[str, Any]
    device: str = "cpu"
    #: position of the first generated token, for graphs that declare ``decode_start``
    decode_start: int | None = None

    #: set by a runner whose graph has the ``ffn_skipped`` output
    skip_counter: SkipCounter | None = None

    def skip_stats(self) -> dict[str, Any] | None:
        """FFN-skip counters since the last :meth:`reset_skip_stats` (None: the model skips
        nothing)."""
        return None if self.skip_counter is None else self.skip_counter.stats()

    def reset_skip_stats(self) -> None:
        """Zero the FFN-skip counters."""
        if self.skip_counter is not None:
            self.skip_counter.reset()

    @property
    def last_skips(self) -> torch.Tensor | None:
        """The last call's ``[batch, seq, layers]`` skip decisions (None: the model skips none)."""
        return None if self.skip_counter is None else self.skip_counter.last_skips

    @abc.abstractmethod
    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, past: KV
    ) -> tuple[torch.Tensor, KV]:
        """``logits [batch, seq, vocab]`` and the cache grown by ``seq`` positions."""

    def forward_last(
        self, input_ids: torch.Tensor, positions: torch.Tensor, past: KV
    ) -> tuple[torch.Tensor, KV]:
        """:meth:`forward` for generation: the logits of the last row only, ``[batch, 1, vocab]``
        (the last prompt position, which token pruning never prunes), and the same cache.
        Runners override it to compute the head for that row alone (the graph's last-row
        variant, :mod:`llmc.ir.lastrow`); this default slices the full logits."""
        logits, present = self.forward(input_ids, positions, past)
        return logits[:, -1:], present

    def empty_past(self, batch: int) -> KV:
        m = self.meta
        dtype = to_torch_dtype(m.get("kv_dtype", m.get("dtype_ir", "f32")))
        shape = (batch, int(m["num_kv_heads"]), 0, int(m["head_dim"]))
        return [
            (torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype))
            for _ in range(int(m["num_layers"]))
        ]

    def check_indices(self, input_ids: torch.Tensor, positions: torch.Tensor) -> None:
        """Refuse a token id outside the vocabulary, or a position past a learned position table
        (GPT-2, OPT), with a ValueError that says which. Every runner calls it first: the
        compiled lookups clamp their index (a bad one never reads past a table, but would give
        a wrong answer), the FPGA simulator indexes numpy arrays (where -1 is the last row), and
        torch's ``embedding`` says only "index out of range in self"."""
        # on the decode path: one aminmax and two int compares (~3 us; min() and max() are ~15)
        vocab = self.meta.get("vocab_size")
        if vocab and input_ids.numel():
            lo, hi = (int(x) for x in torch.aminmax(input_ids))
            if lo < 0 or hi >= vocab:
                bad = lo if lo < 0 else hi
                raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab})")
        limit = self.meta.get("max_position_embeddings")
        learned = self.meta.get("position_embedding") == "learned"
        if learned and limit and positions.numel():
            last = int(positions.max())
            if last >= limit:
                raise ValueError(f"position {last} is past this model's {limit} learned positions")

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def max_positions(self) -> int:
        return int(self.meta.get("max_position_embeddings", 2048))

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full-sequence forward from an empty cache."""
        b, s = input_ids.shape
        pos = torch.arange(s, dtype=torch.int64).expand(b, s)
        return self.forward(input_ids, pos, self.empty_past(b))[0]


class InterpLM(LanguageModel):
    """The reference interpreter over an IR graph that follows the LM ABI."""

    def __init__(self, graph: Graph, device: str = "cpu") -> None:
        self.abi = check_lm_abi(graph)
        self.graph = graph
        self.meta = dict(graph.meta)
        self.meta.setdefault(
            "kv_dtype", graph.inputs[2].type.dtype if len(graph.inputs) > 2 else "f32"
        )
        self.device = device
        if self.abi.skip_output is not None:
            self.skip_counter = SkipCounter(self.abi.num_layers)
        self._last: Graph | bool | None = None  # the last-row variant, once built

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, past: KV
    ) -> tuple[torch.Tensor, KV]:
        return self._run(self.graph, input_ids, positions, past)

    def forward_last(
        self, input_ids: torch.Tensor, positions: torch.Tensor, past: KV
    ) -> tuple[torch.Tensor, KV]:
        from llmc.ir.lastrow import last_row_graph

        if self._last is None:
            self._last = last_row_graph(self.graph) or False
        if self._last is False:  # no row-wise head to slice: slice the logits
            return super().forward_last(input_ids, positions, past)
        return self._run(self._last, input_ids, positions, past)

    def _run(
        self, graph: Graph, input_ids: torch.Tensor, positions: torch.Tensor, past: KV
    ) -> tuple[torch.Tensor, KV]:
        from llmc.runtime.interp import run

        self.check_indices(input_ids, positions)
        check_kv_lengths(self.abi, kv_lengths(past))
        args: list[torch.Tensor] = [input_ids, positions]
        for k, v in past:
            args += [k, v]
        start = NO_DECODE if self.decode_start is None else int(self.decode_start)
        if self.abi.takes_decode_start:
            args.append(torch.tensor(start, dtype=torch.int64))
        outs = run(graph, args, device=self.device)
        if self.skip_counter is not None:
            self.skip_counter.count(outs[self.abi.skip_output], positions, start)
        if outs[0].shape[1] == 0 and input_ids.shape[1]:
            raise LlmcError(
                f"graph @{self.graph.name} kept none of the {input_ids.shape[1]} new tokens: a "
                "pruning mask must keep the last token (LM ABI, llmc-lm-v2)"
            )
        present = [(outs[1 + 2 * i], outs[2 + 2 * i]) for i in range(len(past))]
        return outs[0], present


# ----------------------------------------------------------------------------------------------
# generation


@dataclass
class GenerationResult:
    tokens: list[int]
    prompt_tokens: int
    prefill_s: float
    decode_s: float
    step_s: list[float] = field(default_factory=list)
    #: each layer's cache length right after prefill (the prompt tokens it kept)
    kv_after_prefill: list[int] = field(default_factory=list)

    @property
    def prefill_token_fraction(self) -> float:
        """Mean over layers of kept / prompt tokens after prefill (1.0 without pruning)."""
        k = self.kv_after_prefill
        return sum(k) / (len(k) * self.prompt_tokens) if k and self.prompt_tokens else 1.0

    @property
    def new_tokens(self) -> int:
        return len(self.tokens)

    @property
    def decode_tokens_per_s(self) -> float:
        steps = max(len(self.step_s), 1)
        return steps / self.decode_s if self.decode_s > 0 else float("inf")

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else float("inf")


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None,
    top_k: int = 0,
    top_p: float = 1.0,
) -> int:
    """Greedy when ``temperature == 0``; otherwise softmax sampling with top-k / nucleus."""
    logits = logits.to(torch.float32)
    if temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sp, idx = torch.sort(probs, descending=True)
        keep = torch.cumsum(sp, 0) - sp < top_p
        probs = torch.zeros_like(probs).scatter(0, idx[keep], sp[keep])
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


def generate(
    lm: LanguageModel,
    prompt: Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_id: int | None = None,
    on_token: Callable[[int], None] | None = None,
) -> GenerationResult:
    """Prefill ``prompt`` then decode up to ``max_new_tokens`` tokens with the KV cache."""
    if not prompt:
        raise LlmcError("the prompt is empty: give at least one token")
    limit = lm.max_positions
    if len(prompt) + max_new_tokens > limit:
        raise LlmcError(
            f"prompt ({len(prompt)} tokens) + {max_new_tokens} new tokens exceed the model's "
            f"{limit} positions"
        )
    saved = lm.decode_start
    lm.decode_start = len(prompt)
    try:
        return _generate(
            lm, prompt, max_new_tokens, temperature, top_k, top_p, seed, eos_id, on_token
        )
    finally:
        lm.decode_start = saved


def _generate(
    lm: LanguageModel,
    prompt: Sequence[int],
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
    eos_id: int | None,
    on_token: Callable[[int], None] | None,
) -> GenerationResult:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor([list(prompt)], dtype=torch.int64)
    pos = torch.arange(len(prompt), dtype=torch.int64)[None]
    t0 = time.perf_counter()
    logits, past = lm.forward_last(ids, pos, lm.empty_past(1))
    prefill_s = time.perf_counter() - t0
    kept = kv_lengths(past)
    out: list[int] = []
    steps: list[float] = []
    nxt = sample_next(logits[0, -1], temperature, gen, top_k, top_p)
    for i in range(max_new_tokens):
        out.append(nxt)
        if on_token is not None:
            on_token(nxt)
        if (eos_id is not None and nxt == eos_id) or i == max_new_tokens - 1:
            break
        t = time.perf_counter()
        p = len(prompt) + i
        logits, past = lm.forward(
            torch.tensor([[nxt]], dtype=torch.int64), torch.tensor([[p]], dtype=torch.int64), past
        )
        steps.append(time.perf_counter() - t)
        nxt = sample_next(logits[0, -1], temperature, gen, top_k, top_p)
    return GenerationResult(out, len(prompt), prefill_s, sum(steps), steps, kept)


# ----------------------------------------------------------------------------------------------
# quality


@dataclass
class QualityResult:
    perplexity: float
    tokens: int
    nll: float
    agreement: float | None = None
    windows: int = 0
    window: int = 0
    #: continuation scoring (``prompt > 0``): mean over windows and layers of the prompt tokens
    #: each layer's cache kept after prefill (1.0 unless the model prunes tokens)
    prefill_token_fraction: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "perplexity": self.perplexity,
            "tokens": self.tokens,
            "nll": self.nll,
            "windows": self.windows,
            "window": self.window,
        }
        if self.agreement is not None:
            d["agreement"] = self.agreement
        if self.prefill_token_fraction is not None:
            d["prefill_token_fraction"] = self.prefill_token_fraction
        return d


def evaluate(
    lm: LanguageModel,
    windows: torch.Tensor,
    *,
    reference: LanguageModel | None = None,
    batch_size: int = 4,
    progress: Callable[[int], None] | None = None,
    prompt: int = 0,
    decode_start: int = 1,
) -> QualityResult:
    """Perplexity over ``windows [n, L]`` (predicting tokens 1..L-1 of each from its prefix) and,
    with a ``reference`` model, next-token agreement: the fraction of positions where both models'
    argmax predictions are equal.

    With ``prompt = P > 0`` only the continuation is scored: each window's first ``P`` tokens are
    prefilled in one call (a token-pruning model prunes them), then tokens ``P..L-1`` are fed one
    per call against that cache and tokens ``P+1..L-1`` plus the one after the prompt are
    predicted. A model that prunes rows has no logits for its pruned tokens, so it must be scored
    this way (design.md, "Adaptive execution"); a full forward that returns fewer rows than it was
    given is refused.

    A graph that declares ``decode_start`` (``ffn-skip``) gets ``prompt`` when it is given, else
    ``decode_start`` (default 1: each window is a one-token prompt and its generated, teacher-forced
    continuation, scored in one forward). Its skip decisions are row-wise (the FFN is row-wise and
    attention never skipped), so the one-pass forward takes, per token, the decisions token-by-token
    decoding takes (tests/passes/test_ffn_skip_eval.py)."""
    saved = lm.decode_start
    lm.decode_start = prompt if prompt else decode_start
    try:
        return _evaluate(lm, windows, reference, batch_size, progress, prompt)
    finally:
        lm.decode_start = saved


def _evaluate(
    lm: LanguageModel,
    windows: torch.Tensor,
    reference: LanguageModel | None,
    batch_size: int,
    progress: Callable[[int], None] | None,
    prompt: int,
) -> QualityResult:
    if not 0 <= prompt < windows.shape[1]:
        raise LlmcError(
            f"prompt {prompt} must lie in [0, {windows.shape[1]}) for windows of that length"
        )
    nll = 0.0
    count = 0
    agree = 0
    kept: list[float] = []
    for i in range(0, windows.shape[0], batch_size):
        chunk = windows[i : i + batch_size]
        logits = _scored_logits(lm, chunk, prompt, kept)
        tgt = chunk[:, max(prompt, 1) :]
        lp = torch.log_softmax(logits, dim=-1)
        nll -= float(lp.gather(-1, tgt[..., None]).sum())
        count += tgt.numel()
        if reference is not None:
            ref = _scored_logits(reference, chunk, prompt)
            agree += int((ref.argmax(-1) == logits.argmax(-1)).sum())
        if progress is not None:
            progress(chunk.shape[0])
    mean = nll / max(count, 1)
    return QualityResult(
        perplexity=math.exp(mean),
        tokens=count,
        nll=mean,
        agreement=(agree / count) if reference is not None and count else None,
        windows=int(windows.shape[0]),
        window=int(windows.shape[1]),
        prefill_token_fraction=sum(kept) / len(kept) if kept else None,
    )


def kept_fraction(past: KV, prompt: int) -> float:
    """Mean over layers of the prompt tokens a freshly prefilled cache kept, over ``prompt``."""
    lengths = kv_lengths(past)
    return sum(lengths) / (len(lengths) * prompt) if lengths and prompt else 1.0


def _scored_logits(
    lm: LanguageModel, chunk: torch.Tensor, prompt: int, kept: list[float] | None = None
) -> torch.Tensor:
    """float32 logits predicting ``chunk[:, max(prompt, 1):]``; with ``prompt``, appends the
    prefill's kept fraction (:func:`kept_fraction`) to ``kept``."""
    b, length = chunk.shape
    if prompt and b > 1 and getattr(lm, "max_batch", 0) == 1:  # one sequence at a time (FPGA)
        return torch.cat([_scored_logits(lm, chunk[i : i + 1], prompt, kept) for i in range(b)])
    if prompt == 0:
        logits = lm.logits(chunk)
        if logits.shape[1] != length:
            raise LlmcError(
                f"the model returned logits for {logits.shape[1]} of {length} tokens (it prunes "
                "rows): score it on a continuation with evaluate(..., prompt=N)"
            )
        return logits[:, :-1].to(torch.float32)
    pos = torch.arange(prompt, dtype=torch.int64).expand(b, prompt)
    logits, past = lm.forward_last(chunk[:, :prompt], pos, lm.empty_past(b))
    if kept is not None:
        kept.append(kept_fraction(past, prompt))
    rows = [logits[:, -1:].to(torch.float32)]
    for t in range(prompt, length - 1):
        step, past = lm.forward(chunk[:, t : t + 1], torch.full((b, 1), t, dtype=torch.int64), past)
        rows.append(step[:, -1:].to(torch.float32))
    return torch.cat(rows, dim=1)
