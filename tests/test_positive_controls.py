"""Planted-effect positive controls: an intervention with a known, large effect on a tiny model must be detected by
the same statistics code the entry points use, so a null result from them means something.

The plant: `ResidualAdd` at the output of the last block with a large multiple of the unembedding row of one token,
which makes that token the greedy next token. Binary outcome ("the completion starts with that token"), paired
over 30 prompts: exact McNemar as in the n50 / steer_attention / knockout_generate pipelines
(`steerkit.stats.paired_binary_summary`). Continuous outcome (that token's next-token log-probability): the
Wilcoxon signed-rank of knockout (`attention.knockout.paired_test`) and of the entropy analysis
(`entropy.stats.paired_comparison`). Each design is first checked to be able to reject at all.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from steerkit.attention.knockout import paired_test
from steerkit.core.generation import GenerationConfig, generate, next_token_logits
from steerkit.entropy.stats import paired_comparison
from steerkit.interventions import ResidualAdd
from steerkit.stats import paired_binary_summary
from steerkit.stats.design import Design

N = 30
WORDS = ["apple", "river", "stone", "cloud", "table", "green", "seven", "light", "paper", "metal"]
PROMPTS = [f"{WORDS[i % 10]} {WORDS[(3 * i + 1) % 10]} {WORDS[(7 * i + 2) % 10]} {i}" for i in range(N)]


@pytest.fixture(scope="module")
def planted(tiny):
    """(model, forced token id, the planted intervention, its identity twin at coefficient 0)."""
    loaded = tiny("llama")
    unembed = loaded.model.get_output_embeddings().weight.detach()
    plain = next_token_logits(loaded, PROMPTS)
    token = int(plain.argmin(dim=-1)[0])  # a token the unsteered model does not pick for the first prompt
    last = loaded.n_layers - 1
    return loaded, token, ResidualAdd(last, unembed[token], coef=1000.0), ResidualAdd(last, unembed[token], coef=0.0)


def test_mcnemar_detects_a_forced_first_token(planted):
    loaded, token, plant, identity = planted
    design = Design("starts_with_token", "mcnemar_exact", N)
    assert design.can_reject
    cfg = GenerationConfig(max_new_tokens=2, batch_size=8)
    base = generate(loaded, PROMPTS, interventions=[identity], config=cfg, progress=False)
    steer = generate(loaded, PROMPTS, interventions=[plant], config=cfg, progress=False)
    base_hit = [g.token_ids[:1] == (token,) for g in base]
    steer_hit = [g.token_ids[:1] == (token,) for g in steer]
    assert sum(steer_hit) >= 25 and sum(base_hit) <= 2  # the plant works (else the control is void)
    stats = paired_binary_summary(base_hit, steer_hit, "starts_with_token")
    assert stats["starts_with_token_mcnemar_p"] < 0.05
    assert stats["starts_with_token_risk_difference_low"] > 0
    null = paired_binary_summary(base_hit, base_hit, "starts_with_token")  # no effect: nothing found
    assert null["starts_with_token_mcnemar_p"] == 1.0


def _token_logprob(loaded, token: int, interventions) -> list[float]:
    logits = next_token_logits(loaded, PROMPTS, interventions=interventions)
    return torch.log_softmax(logits, dim=-1)[:, token].tolist()


def test_wilcoxon_detects_a_raised_log_probability(planted):
    loaded, token, plant, identity = planted
    design = Design("token_logprob", "wilcoxon_exact", N, family_size=10)  # e.g. BH over 10 layers
    assert design.can_reject
    base, steer = _token_logprob(loaded, token, [identity]), _token_logprob(loaded, token, [plant])
    knockout = paired_test(steer, base)  # knockout's statistics (knockout arm vs control arm)
    assert knockout["wilcoxon_p"] < 0.05 / 10 and knockout["median_diff_low"] > 0
    assert paired_test(base, base)["wilcoxon_p"] == 1.0
    frame = pd.DataFrame(
        [{"prompt": f"p{i}", "source": "mt", "logprob": v} for i, v in enumerate(base)]
        + [{"prompt": f"p{i}", "source": "planted", "logprob": v} for i, v in enumerate(steer)]
    )
    entropy = paired_comparison(frame, "logprob", "planted", "mt")  # the entropy analysis' statistics
    assert entropy.wilcoxon_p is not None and entropy.wilcoxon_p < 0.05 / 10 and entropy.ci_low > 0
