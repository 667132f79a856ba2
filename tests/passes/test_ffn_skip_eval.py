"""The one-pass evaluation of an ffn-skip graph takes, per token, the skip decisions (and gives the
logits) of token-by-token decoding (design.md, "Adaptive execution": the FFN is row-wise and
attention never skipped, so a teacher-forced forward with a decision per row is decoding with the
same decisions)."""

from __future__ import annotations

import pytest
import torch

from llmc.data import eval_windows
from llmc.frontends import load_model
from llmc.passes import PassContext, build_pipeline
from llmc.runtime.lm import KV, InterpLM, evaluate, generate

P = 16  # prompt tokens of each window


@pytest.fixture(scope="module")
def lm() -> InterpLM:
    g = load_model("tiny").graph
    build_pipeline("ffn-skip:ratio=0.3").run(g, PassContext(calib_samples=8, calib_seqlen=128))
    return InterpLM(g)


def _token_by_token(lm: InterpLM, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill ``window[:P]``, then feed the rest one token per call (teacher forcing):
    logits ``[L, vocab]`` and decisions ``[L, layers]``."""
    lm.decode_start = P
    logits, past = lm.forward(window[None, :P], torch.arange(P)[None], lm.empty_past(1))
    rows, skips = [logits[0]], [lm.last_skips[0]]
    for t in range(P, window.numel()):
        step, past = lm.forward(window[None, t : t + 1], torch.tensor([[t]]), past)
        rows.append(step[0])
        skips.append(lm.last_skips[0])
    return torch.cat(rows), torch.cat(skips)


def test_one_pass_equals_token_by_token_decoding(lm: InterpLM) -> None:
    windows = eval_windows(96, max_tokens=96 * 3)
    total = 0
    for window in windows:
        lm.decode_start = P
        one = lm.logits(window[None])[0]
        one_skips = lm.last_skips[0].clone()
        seq, seq_skips = _token_by_token(lm, window)
        assert torch.equal(one_skips, seq_skips)
        assert not one_skips[: P + 4].any()  # prompt and warmup run the full model
        torch.testing.assert_close(one, seq, atol=2e-4, rtol=1e-4)
        total += int(one_skips.sum())
    assert total > 0  # the comparison covered real skips


def test_one_pass_matches_generate(lm: InterpLM) -> None:
    """Real greedy generation, recording each step's decisions, against one forward over the
    prompt and the generated tokens."""
    prompt = list(b"class Parser:\n    def __init__(self, text):\n        self.")
    steps: list[torch.Tensor] = []
    forward = lm.forward

    def recording(ids: torch.Tensor, pos: torch.Tensor, past: KV):  # noqa: ANN202
        out = forward(ids, pos, past)
        steps.append(lm.last_skips[0])
        return out

    forward_last = lm.forward_last

    def recording_last(ids: torch.Tensor, pos: torch.Tensor, past: KV):  # noqa: ANN202
        out = forward_last(ids, pos, past)  # generation's prefill: the last-row head
        steps.append(lm.last_skips[0])
        return out

    lm.forward = recording  # type: ignore[method-assign]
    lm.forward_last = recording_last  # type: ignore[method-assign]
    try:
        res = generate(lm, prompt, 40)
    finally:
        del lm.forward
        del lm.forward_last
    decoded = torch.cat(steps)  # prompt rows, then one row per fed-back token
    full = torch.tensor([prompt + res.tokens[:-1]])
    lm.decode_start = len(prompt)
    logits = lm.logits(full)[0]
    assert torch.equal(lm.last_skips[0], decoded)
    assert logits[len(prompt) - 1 :].argmax(-1).tolist() == res.tokens
    assert decoded.any()


def test_evaluate_one_pass_and_continuation_agree(lm: InterpLM) -> None:
    """``evaluate(prompt=P)`` (prefill + one token per call) and ``evaluate(decode_start=P)``
    (one forward) score the continuation with the same decisions."""
    windows = eval_windows(64, max_tokens=64 * 2)
    lm.reset_skip_stats()
    seq = evaluate(lm, windows, prompt=P)
    seq_stats = lm.skip_stats()
    lm.reset_skip_stats()
    # the continuation path never feeds a window's last token: the one-pass run on the windows
    # without it runs exactly the rows the continuation ran
    one = evaluate(lm, windows[:, :-1], decode_start=P)
    one_stats = lm.skip_stats()
    assert one_stats == seq_stats
    assert one.tokens == seq.tokens + windows.shape[0] * (P - 2)
    assert seq_stats["ffn_skip_fraction"] > 0
