"""llama.cpp alone: decode tok/s of one GGUF outside bench/cpu_peers.py's harness (a cross-check).

Run with the peers' venv (bench/cpu_peers.py builds it)::

    bench/.peers-venv/bin/python bench/llama_cpp_alone.py /tmp/llmc-cpu-peers/model.q4_0.gguf \\
        --threads 2 [--no-extra-bufts]

32-token prompt, then ``--tokens`` single-token ``eval`` calls timed as a whole, ``--repeats``
times; prints llama.cpp's system-info line and one tok/s per repeat. ``--no-extra-bufts`` sets
``llama_model_params.use_extra_bufts = false`` (no weight repacking, no AMX buffers).
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-extra-bufts", action="store_true")
    a = ap.parse_args()
    import llama_cpp
    import llama_cpp.llama as llama_mod

    if a.no_extra_bufts:
        default = llama_cpp.llama_model_default_params

        def params():  # the Llama class reads its defaults through this module attribute
            p = default()
            p.use_extra_bufts = False
            return p

        llama_mod.llama_cpp.llama_model_default_params = params
    llm = llama_cpp.Llama(
        a.gguf,
        n_threads=a.threads,
        n_threads_batch=a.threads,
        n_ctx=256,
        n_batch=64,
        verbose=False,
    )
    print(llama_cpp.llama_print_system_info().decode().strip())
    for _ in range(a.repeats):
        llm.reset()
        llm.eval(list(range(10, 42)))
        t = time.perf_counter()
        for i in range(a.tokens):
            llm.eval([100 + i])
        dt = time.perf_counter() - t
        extra = " no-extra-bufts" if a.no_extra_bufts else ""
        print(f"{a.gguf} threads={a.threads}{extra}: decode {a.tokens / dt:.1f} tok/s")


if __name__ == "__main__":
    main()
