"""Run the ``llmc`` CLI with zoo models cut to fewer decoder layers (bench only).

A model argument ``NAME@N`` (``NAME`` a zoo model, :func:`llmc.frontends.zoo.names`) is the zoo
model's config with ``num_hidden_layers`` (``n_layer``) set to ``N``: every layer has the zoo
model's shapes, only the depth changes. The CLI has no such option (a real config has one
depth); this exists so that the per-layer memory of a pass on a large model's shapes can be
measured on a machine that cannot run all its layers in the time at hand: compare the peaks of
two depths (``llama2-7b@2`` and ``llama2-7b@4``) to get what one more layer adds. Example::

    python bench/zoo_layers.py compile llama2-7b@2 --target cpu --random-weights --dtype f32
"""

from __future__ import annotations

import re
import sys

_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)@(?P<layers>\d+)$")


def register(spec: str) -> str:
    """Register ``NAME@N`` as the zoo model ``NAME-Nl`` and return that name (other specs are
    returned unchanged)."""
    from llmc.frontends import zoo

    m = _SPEC.match(spec)
    if m is None or m["name"] not in zoo.names():
        return spec
    cfg = zoo.config(m["name"])
    key = "n_layer" if "n_layer" in cfg else "num_hidden_layers"
    layers = int(m["layers"])
    if not 1 <= layers <= int(cfg[key]):
        raise SystemExit(f"{spec}: {m['name']} has {cfg[key]} layers; ask for 1 to {cfg[key]}")
    name = f"{m['name']}-{layers}l"
    zoo.CONFIGS[name] = dict(cfg, **{key: layers})
    return name


def main(argv: list[str]) -> int:
    from llmc.cli import main as llmc_main

    return llmc_main([register(a) for a in argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
