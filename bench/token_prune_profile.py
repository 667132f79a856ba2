"""Where a CPU artifact's prefill spends its time, per kernel: process CPU time of every VM call
(through the VM's instrument hook), summed per kernel name, mean over ``--repeats`` prefills.

Usage::

    llmc compile tiny --target cpu --passes token-prune:average=0.5 -o /tmp/tiny-prune
    TVM_NUM_THREADS=1 python bench/token_prune_profile.py /tmp/tiny-prune --prompt-len 1000

Prints the total, the share of token pruning's kernels (names holding ``prune`` or ``gather``)
and the top kernels. Outlined layer functions (``*_layer``) are calls that contain other calls:
they are listed but left out of the total.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from _common import ROOT

sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact")
    ap.add_argument("--prompt-len", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)

    import torch
    import tvm_ffi

    from llmc.runtime.tvm_runner import load

    lm = load(args.artifact)
    acc: dict[str, float] = {}
    start: dict[str, float] = {}

    def instrument(func: Any, sym: str, before: bool, ret: Any, *rest: Any) -> int:
        if before:
            start[sym] = time.process_time()
        else:
            acc[sym] = acc.get(sym, 0.0) + time.process_time() - start[sym]
        return 0

    lm.vm.set_instrument(tvm_ffi.convert(instrument))
    vocab = min(lm.vocab_size, 256)
    ids = torch.tensor([[(i * 7 + 3) % vocab for i in range(args.prompt_len)]])
    pos = torch.arange(args.prompt_len)[None]
    lm.forward(ids, pos, lm.empty_past(1))  # warm-up
    acc.clear()
    for _ in range(args.repeats):
        lm.forward(ids, pos, lm.empty_past(1))
    ms = {k: 1000 * v / args.repeats for k, v in acc.items()}
    total = sum(v for k, v in ms.items() if not k.endswith("_layer"))
    prune = sum(v for k, v in ms.items() if "prune" in k or "gather" in k)
    print(f"prefill of {args.prompt_len} tokens: {total:.2f} ms CPU in VM calls")
    print(f"token pruning kernels: {prune:.2f} ms ({100 * prune / total:.1f}%)")
    for k, v in sorted(ms.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{v:9.2f} ms  {k}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
