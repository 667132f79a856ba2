"""Op x target coverage: every op in the registry lowers on every TVM target kind, or is refused at
compile time in one line that names it; the FPGA target lowers ``cond`` to a predicated branch
(``llmc/fpga/lower_cond.py``) and refuses every op it has no handler for likewise."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmc.errors import UnsupportedOpError
from llmc.ir.registry import all_ops

#: ops the lowering driver handles itself, before the rule list (``Lowering._lower_node``)
DRIVER_OPS = {"param"}
TVM_TARGETS = {"cpu": "cpu", "cuda": "h100", "rocm": "mi300x"}


@pytest.mark.parametrize("kind", sorted(TVM_TARGETS))
def test_every_op_has_a_rule_on_every_tvm_kind(kind):
    from llmc.backends import pipeline_for
    from llmc.backends.rules import FALLBACK, check_rules, rule_list
    from llmc.targets import get_target

    target = get_target(TVM_TARGETS[kind])
    assert target.kind == kind
    rules = rule_list(pipeline_for(target).target_rules())
    check_rules(rules)  # ... ending in the fallback, which refuses in one line (below)
    missing = [
        op
        for op in sorted(all_ops())
        if op not in DRIVER_OPS
        and not any(
            r is not FALLBACK and r.op == op and (r.kinds is None or kind in r.kinds) for r in rules
        )
    ]
    assert missing == [], f"ops with no lowering rule on {kind}: {missing}"
    assert any(r.name == "cond" for r in rules)
    # token pruning lowers (rules_prune.py) rather than refusing, on every TVM kind
    prune = {r.op: r.name for r in rules if r.op in ("token_scores", "keep_rows", "gather_rows")}
    assert prune == {op: op for op in ("token_scores", "keep_rows", "gather_rows")}
    assert not [r.name for r in rules if "refused" in r.name]


def test_unmatched_op_is_refused_in_one_line_naming_it():
    """What the fallback says when no rule matches (here: a rule list of the fallback alone)."""
    from llmc.backends.lower import Entry, Lowering
    from llmc.backends.rules import FALLBACK
    from llmc.targets import get_target
    from tests.backends.cond_lm import cond_lm

    t = get_target("cpu")
    with pytest.raises(UnsupportedOpError) as e:
        Lowering(cond_lm("parity"), t, None, [FALLBACK]).lower([Entry("prefill")])
    msg = str(e.value)
    assert "\n" not in msg
    assert re.match(r"op '\w+' \(%\w+ at [\w.]+\) is not supported on target cpu \(cpu\)", msg)


def test_fpga_refuses_a_predicate_it_cannot_compute_in_one_line(tmp_path: Path):
    """The FPGA lowers ``cond`` (a branch over the side that is not the identity), but these
    predicates use ops the accelerator has no handler for (``cos``, ``neg``, a float cast of
    the positions): refused at compile time, in one line naming the op."""
    from llmc.compile import Loaded, compile_model
    from tests.backends.cond_lm import cond_lm

    for how in ("parity", "cos"):
        with pytest.raises(UnsupportedOpError) as e:
            compile_model(
                Loaded(cond_lm(how), None, "toy", "tests"), target="u280", out=tmp_path / how
            )
        msg = str(e.value)
        assert "\n" not in msg and "model.layers.0" in msg
        assert re.search(r"\b(cast|neg|cos)\b", msg), msg
        assert not (tmp_path / how).exists()  # nothing half-written


def test_fpga_refuses_an_op_without_handler_in_one_line(tmp_path: Path):
    """Ops the FlightLLM model has no handler for (``neg`` here) are refused the same way."""
    from llmc.compile import Loaded, compile_model
    from llmc.fpga.lower_ops import HANDLERS
    from tests.lm_fixtures import toy_lm

    assert "neg" not in HANDLERS
    g = toy_lm()
    emb = next(n for n in g.nodes if n.op == "embedding")
    neg = g.make_node("neg", [emb.out], None, name="flipped", scope="model.embed_tokens")
    g.insert_after(emb, neg)
    g.replace_uses(emb.out, neg.out, after=neg)
    with pytest.raises(UnsupportedOpError) as e:
        compile_model(Loaded(g, None, "toy", "tests"), target="u280", out=tmp_path / "neg")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("op 'neg' (%flipped")
