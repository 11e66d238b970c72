"""Entropy sources, counter-mode streams, the stream sampler, and the entropy statistics."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from steerkit.entropy.control import control_metrics
from steerkit.entropy.sampler import StreamSampler, gumbel_draw, inverse_cdf_draw
from steerkit.entropy.sources import (
    SOURCES,
    ByteStream,
    FixedSource,
    MersenneSource,
    PCG64Source,
    compare_seed_distributions,
    ks_uniform,
    make_source,
    parse_sources,
    repeated_blocks,
)
from steerkit.entropy.stats import bh_family, mixed_model, paired_comparison, paired_t_power, power_report
from steerkit.errors import SteerkitError


def test_stream_is_counter_mode_sha256():
    key = bytes(range(32))
    data = ByteStream(key, "p1").read(96)
    prefix = key + len(b"p1").to_bytes(4, "little") + b"p1"
    expected = b"".join(hashlib.sha256(prefix + i.to_bytes(8, "little")).digest() for i in range(3))
    assert data == expected


def test_stream_reads_are_contiguous_and_never_repeat_a_block():
    a, b = ByteStream(b"k" * 32, "x"), ByteStream(b"k" * 32, "x")
    pieces = b"".join(a.read(n) for n in (1, 5, 31, 32, 33, 0, 100, 4096 - 202))
    assert pieces == b.read(4096)
    assert repeated_blocks(ByteStream(b"k" * 32, "x").read(1 << 16)) == 0
    assert repeated_blocks(b"\x00" * 32 * 4) == 3  # the reference's failure mode is detected
    assert ByteStream(b"k" * 32, "y").read(64) != ByteStream(b"k" * 32, "x").read(64)


def test_stream_uniforms_lie_in_open_unit_interval():
    s = ByteStream(b"u" * 32, "u")
    for bits in (32, 53):
        u = s.uniforms(5000, bits=bits)
        assert u.shape == (5000,) and (u > 0).all() and (u < 1).all()
        assert abs(u.mean() - 0.5) < 0.02


@pytest.mark.parametrize("name", list(SOURCES))
def test_every_source_gives_32_bit_seeds_and_streams(name):
    src = make_source(name, 7)
    seeds = src.seeds(50)
    assert len(seeds) == 50 and all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds)
    data = src.stream("label").read(1000)
    assert len(data) == 1000 and repeated_blocks(data) == 0
    assert len(src.raw(17)) == 17


def test_seeded_sources_reproduce_and_fork_independently():
    assert MersenneSource(3).seeds(5) == MersenneSource(3).seeds(5) != MersenneSource(4).seeds(5)
    assert PCG64Source(3).seeds(5) == PCG64Source(3).seeds(5)
    assert MersenneSource(3).fork("a").seeds(5) != MersenneSource(3).fork("b").seeds(5)
    assert MersenneSource(3).stream("p").key == MersenneSource(3).stream("p").key
    assert make_source("os").seeds(4) != make_source("os").seeds(4)
    assert make_source("sha256_mix").raw(64) != make_source("sha256_mix").raw(64)


def test_fixed_source_is_constant():
    f = FixedSource(42)
    assert f.seeds(4) == [42] * 4
    assert f.stream("a").key == f.stream("a").key == FixedSource(42).stream("b").key
    assert f.fork("x") is f


def test_unknown_or_duplicate_sources_are_refused():
    with pytest.raises(SteerkitError, match="'bogus'"):
        make_source("bogus")
    with pytest.raises(SteerkitError, match="twice"):
        parse_sources("mt,mt")
    assert parse_sources(" mt, os ") == ["mt", "os"]


def test_ks_comparisons():
    res = compare_seed_distributions({"mt": MersenneSource(1).seeds(2000), "pcg64": PCG64Source(1).seeds(2000)})
    assert [(r.a, r.b) for r in res] == [("mt", "uniform"), ("pcg64", "uniform"), ("mt", "pcg64")]
    assert all(r.p_value > 1e-4 for r in res)
    assert ks_uniform("fixed", FixedSource().seeds(500)).p_value < 1e-10


def test_inverse_cdf_and_gumbel_draws():
    p = np.array([0.0, 0.25, 0.0, 0.75])
    assert [inverse_cdf_draw(p, u) for u in (1e-9, 0.2499, 0.2501, 0.999999)] == [1, 1, 3, 3]
    assert gumbel_draw(p, np.full(4, 0.5), 0.0) == 3  # noise scale 0 is greedy
    s = ByteStream(b"g" * 32, "g")
    draws = [gumbel_draw(p, s.uniforms(4, bits=32), 1.0) for _ in range(4000)]
    assert set(draws) == {1, 3} and abs(draws.count(3) / 4000 - 0.75) < 0.03  # exact sampling at scale 1


def test_stream_sampler_is_batch_independent_and_validates():
    probs = torch.softmax(torch.randn(3, 50, generator=torch.Generator().manual_seed(0)), -1)

    def streams() -> dict[str, ByteStream]:
        return {pid: ByteStream(pid.encode() * 16, pid) for pid in ("a", "b", "c")}

    for method in ("inverse_cdf", "gumbel"):
        together = StreamSampler(streams(), method)(probs, ["a", "b", "c"], 0).tolist()
        alone = StreamSampler(streams(), method)
        assert [alone(probs[i : i + 1], [pid], 0).item() for i, pid in enumerate("abc")] == together
    with pytest.raises(SteerkitError, match="'nope'"):
        StreamSampler({}, "nope")
    with pytest.raises(SteerkitError, match="gumbel"):
        StreamSampler({}, "inverse_cdf", 2.0)
    with pytest.raises(SteerkitError, match="'zz'"):
        StreamSampler(streams(), "gumbel")(probs[:1], ["zz"], 0)


def test_bh_family_matches_statsmodels_and_skips_nan():
    ps = [0.001, 0.04, None, 0.03, float("nan"), 0.2, 0.011]
    res = bh_family(ps, 0.05)
    tested = [p for p in ps if p is not None and not math.isnan(p)]
    reject, q, _, _ = multipletests(tested, alpha=0.05, method="fdr_bh")
    assert res.family_size == 5
    assert [x for x in res.q_values if x is not None] == pytest.approx(list(q))
    assert [r for r, p in zip(res.rejected, ps) if p is not None and not math.isnan(p)] == list(reject)
    assert res.q_values[2] is None and res.q_values[4] is None and not res.rejected[4]


def _synthetic(effect: float, n_prompts: int = 12, n_samples: int = 4, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        intercept = rng.normal(0, 2)
        for source, shift in (("mt", 0.0), ("os", effect), ("pcg64", 0.0)):
            for k in range(n_samples):
                rows.append({"prompt": f"p{p}", "source": source, "sample": k, "v": intercept + shift + rng.normal()})
    return pd.DataFrame(rows)


def test_mixed_model_recovers_a_planted_effect():
    effects = {m.source: m for m in mixed_model(_synthetic(1.0), "v", "mt")}
    assert set(effects) == {"os", "pcg64"}
    assert effects["os"].converged and effects["os"].n_groups == 12 and effects["os"].n_obs == 144
    assert effects["os"].coef == pytest.approx(1.0, abs=0.35) and effects["os"].p_value < 1e-4
    assert effects["os"].ci_low < 1.0 < effects["os"].ci_high
    assert effects["pcg64"].p_value > 0.01


def test_mixed_model_reports_constant_outcome_instead_of_failing():
    df = _synthetic(0.0).assign(v=1.0)
    (os_, pcg) = mixed_model(df, "v", "mt")
    assert os_.p_value is None and "constant" in os_.reason


def test_paired_comparison_planted_effect_and_identical_outputs():
    res = paired_comparison(_synthetic(1.0), "v", "os", "mt")
    assert res.n_pairs == 12 and res.wilcoxon_p < 0.01 and res.ttest_p < 0.01
    assert res.ci_low < res.mean_diff < res.ci_high and res.dz > 0
    same = _synthetic(0.0)
    same.loc[same.source == "os", "v"] = same.loc[same.source == "mt", "v"].to_numpy()
    res = paired_comparison(same, "v", "os", "mt")
    assert res.wilcoxon_p is None and res.ttest_p is None and "identical" in res.reason
    assert bh_family([res.primary_p("wilcoxon"), 0.01]).family_size == 1


def test_power_matches_statsmodels():
    solver = TTestPower()
    for dz, n, alpha in ((0.5, 20, 0.05), (0.7, 10, 0.01), (1.2, 4, 0.05)):
        assert paired_t_power(dz, n, alpha) == pytest.approx(solver.power(dz, n, alpha), rel=1e-9)
    rep = power_report(20, 0.05, 0.8, family_size=10)
    assert rep.mde_dz == pytest.approx(solver.solve_power(None, nobs=20, alpha=0.05, power=0.8), rel=1e-6)
    assert rep.mde_dz_bonferroni > rep.mde_dz
    assert power_report(1).mde_dz is None


def test_control_metrics_count_groups_and_seed_pairs_by_hand():
    """entropy_control's mechanism figures live in the library (`steerkit.entropy.control`, one home): 2 prompts x
    2 samples x 2 sources, one (prompt, k) group differing across sources; within the first source, prompt a has
    two different seed values with different texts, prompt b two with the same text."""

    def rec(source, prompt, k, seed, ids):
        return {"source": source, "prompt": prompt, "sample": k, "seed": seed, "token_ids": ids}

    records = [
        rec("mt", "a", 0, 11, [1, 2]),
        rec("mt", "a", 1, 12, [1, 3]),
        rec("mt", "b", 0, 21, [4]),
        rec("mt", "b", 1, 22, [4]),
        rec("os", "a", 0, 11, [1, 2]),
        rec("os", "a", 1, 12, [1, 3]),
        rec("os", "b", 0, 21, [4]),
        rec("os", "b", 1, 22, [5]),  # the one group whose outputs differ across sources
    ]
    m = control_metrics(records)
    assert m["n_groups"] == 4 and m["identity_n_differing_groups"] == 1
    assert m["identical_fraction"] == 3 / 4
    assert m["n_seed_pairs"] == 2 and m["distinct_seed_fraction"] == 1 / 2
    # a pair with the SAME seed value is no contrast: it is not counted
    same_seed = [rec("mt", "c", 0, 7, [1]), rec("mt", "c", 1, 7, [1])]
    assert control_metrics(same_seed)["n_seed_pairs"] == 0 and math.isnan(
        control_metrics(same_seed)["distinct_seed_fraction"]
    )
    script = (Path(__file__).resolve().parents[1] / "experiments" / "entropy_control.py").read_text()
    assert "def control_metrics" not in script
