"""The applied dose (edge share and KL over generated positions, teacher-forced) against independent paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as sps

from steerkit.attention import n50
from steerkit.attention.applied_dose import applied_dose, continuations_of
from steerkit.attention.edge_rules import attention_scale
from steerkit.core.generation import GenerationConfig, encode_prompts, generate
from steerkit.core.models import load_model
from steerkit.corpora.prompts import load_prompt_corpus
from steerkit.corpora.splits import disjoint, ids_digest, select_split, split_of
from steerkit.interventions import steer
from tests.conftest import CORPUS_N50

LAYER = 2


def _prompts_and_baseline(lm, rule: str, n: int = 3, tokens: int = 6):
    prompts = [cp.as_prompt() for cp in load_prompt_corpus(CORPUS_N50).limit(n)]
    identity = attention_scale(rule, LAYER, 1.0)
    gens = generate(lm, prompts, interventions=[identity], config=GenerationConfig(max_new_tokens=tokens, batch_size=2))
    return prompts, continuations_of([g.to_dict() for g in gens])


def test_generated_kl_is_positive_where_the_last_prompt_token_kl_is_zero(tiny):
    """generated_to_doctest edits only generated queries: the old last-prompt-token KL is exactly 0 at every scale,
    the KL over the teacher-forced generated positions is > 0 at scale 3 and exactly 0 at scale 1."""
    lm = tiny("llama")
    prompts, cont = _prompts_and_baseline(lm, "generated_to_doctest")
    assert all(len(c) >= 2 for c in cont.values())
    edit_1, edit_3 = (attention_scale("generated_to_doctest", LAYER, s) for s in (1.0, 3.0))
    old = n50.identity_and_kl(lm, prompts, edit_1, edit_3, False, 2)
    assert old["kl_last_token_max"] == 0.0
    new, rows = applied_dose(lm, prompts, cont, edit_1, edit_3, layer=LAYER, batch_size=2)
    assert new["kl_generated_mean"] > 0 and all(r["kl_generated_mean"] > 0 for r in rows)
    assert new["dose_share_steered"] > new["dose_share_baseline"] > 0
    same, rows_1 = applied_dose(lm, prompts, cont, edit_1, edit_1, layer=LAYER, batch_size=2)
    assert same["kl_generated_mean"] == 0.0 and same["kl_generated_max"] == 0.0
    assert same["dose_share_steered"] == same["dose_share_baseline"] == new["dose_share_baseline"]
    assert [r["id"] for r in rows_1] == [p.id for p in prompts] and same["n_dose_prompts"] == 3


def test_shares_and_kl_against_eager_attentions_closed_form_and_scipy(tiny):
    """Batched, left-padded passes vs one unpadded sequence per prompt: the baseline share from HF's eager
    `output_attentions`, the steered share from the closed form s*M/(1+(s-1)M) per query row, and the KL from
    scipy's entropy on a single-prompt steered pass."""
    lm, scale = tiny("llama"), 2.5
    prompts, cont = _prompts_and_baseline(lm, "signature_to_doctest")
    edit_1, edit_s = (attention_scale("signature_to_doctest", LAYER, s) for s in (1.0, scale))
    _, rows = applied_dose(lm, prompts, cont, edit_1, edit_s, layer=LAYER, batch_size=3)
    eager = load_model("tiny-llama")
    eager.model.set_attn_implementation("eager")
    for enc, row in zip(encode_prompts(lm, prompts, False), rows):
        ids = torch.tensor([list(enc.ids) + cont[enc.id]])
        src, tgt = edit_1.sources.resolve(enc), edit_1.targets.resolve(enc)
        queries = list(range(src.first, ids.shape[1]))
        with torch.no_grad():
            att = eager.model(ids, output_attentions=True).attentions[LAYER][0]  # [heads, seq, seq]
            plain = lm.model(ids).logits[0].double()
        mass = att[:, queries][:, :, sorted(tgt.indices)].sum(-1)  # [heads, n_queries]
        assert row["share_baseline"] == pytest.approx(float(mass.mean()), abs=1e-6)
        closed = scale * mass / (1 + (scale - 1) * mass)
        assert row["share_steered"] == pytest.approx(float(closed.mean()), abs=1e-6)
        with torch.no_grad(), steer(lm, edit_s, prompts=[enc]):
            steered = lm.model(ids).logits[0].double()
        n, p_len = len(cont[enc.id]), len(enc)
        chosen = slice(p_len - 1, p_len - 1 + n)
        p, q = torch.softmax(plain[chosen], -1).numpy(), torch.softmax(steered[chosen], -1).numpy()
        kl = np.array([sps.entropy(a, b) for a, b in zip(p, q)])
        assert row["kl_generated_mean"] == pytest.approx(float(kl.mean()), rel=1e-4, abs=1e-9)


def test_split_is_by_id_disjoint_and_stable():
    items = load_prompt_corpus(CORPUS_N50).prompts
    cal, ev = select_split(items, "calibration"), select_split(items, "eval")
    assert {p.id for p in cal}.isdisjoint({p.id for p in ev}) and len(cal) + len(ev) == len(items)
    assert (len(cal), len(ev)) == (12, 38)
    assert [p.id for p in select_split(list(reversed(items)), "eval")] == [p.id for p in reversed(ev)]
    assert select_split(items[:5], "eval") == [p for p in items[:5] if split_of(p.id) == "eval"]
    assert ids_digest(["b", "a"]) == ids_digest(["a", "b"]) != ids_digest(["a"])
    assert disjoint("calibration", "eval") and not disjoint("calibration", "calibration")
    assert not disjoint("calibration", "all")


def test_several_scales_share_the_identitys_pass_and_each_equals_its_own_call(tiny, monkeypatch):
    """`applied_doses` (a sweep's scales at once, as sweep_scales' trials read them) runs the identity's teacher-forced
    pass once per batch and gives every scale exactly what its own `applied_dose` call gives."""
    from steerkit.attention import applied_dose as module

    lm = tiny("llama")
    prompts, cont = _prompts_and_baseline(lm, "signature_to_doctest")
    edit_1 = attention_scale("signature_to_doctest", LAYER, 1.0)
    edits = {s: attention_scale("signature_to_doctest", LAYER, s) for s in (2.0, 3.0, 6.0)}
    alone = {s: applied_dose(lm, prompts, cont, edit_1, e, layer=LAYER, batch_size=2) for s, e in edits.items()}
    passes: list[float] = []
    real = module._pass
    monkeypatch.setattr(
        module, "_pass", lambda lm_, enc, b, edit, *a: passes.append(edit.value) or real(lm_, enc, b, edit, *a)
    )
    together = module.applied_doses(lm, prompts, cont, edit_1, edits, layer=LAYER, batch_size=2)
    assert together == alone
    assert passes == [1.0, 2.0, 3.0, 6.0] * 2  # 3 prompts in batches of 2: one identity pass per batch
    assert len({t[0]["kl_generated_mean"] for t in together.values()}) == 3  # precondition: the scales differ
