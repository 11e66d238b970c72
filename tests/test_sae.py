"""SAE class, loaders, training and splicing, checked against hand-written numpy/torch maths."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from steerkit.core.models import LoadedModel
from steerkit.core.positions import encode
from steerkit.errors import SteerkitError
from steerkit.interventions import ResidualAdd, steer
from steerkit.sae import (
    SAE,
    Activation,
    SAEConfig,
    SAESplice,
    TrainConfig,
    load_gemmascope_npz,
    load_sae,
    load_saelens,
    sae_metrics,
    spliced_loss,
    train_sae,
)
from steerkit.sae.loaders import save_saelens

RNG = np.random.default_rng(0)


def _weights(d_in: int, d_sae: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(d_in, d_sae)).astype(np.float32),
        "b_enc": rng.normal(size=d_sae).astype(np.float32) * 0.3,
        "W_dec": rng.normal(size=(d_sae, d_in)).astype(np.float32),
        "b_dec": rng.normal(size=d_in).astype(np.float32),
        "threshold": rng.uniform(0.1, 0.8, size=d_sae).astype(np.float32),
    }


def _jumprelu_np(x: np.ndarray, w: dict[str, np.ndarray], subtract_b_dec: bool) -> tuple[np.ndarray, np.ndarray]:
    """GemmaScope's JumpReLU by hand: pre = x @ W_enc + b_enc; zero where pre <= threshold."""
    pre = (x - w["b_dec"] if subtract_b_dec else x) @ w["W_enc"] + w["b_enc"]
    f = np.where(pre > w["threshold"], pre, 0.0)
    return f, f @ w["W_dec"] + w["b_dec"]


def _write_saelens(directory: Path, cfg: dict, tensors: dict[str, np.ndarray]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: torch.from_numpy(v) for k, v in tensors.items()}, str(directory / "sae_weights.safetensors"))
    return directory


def _pre6_cfg(hook_name: str, **extra: object) -> dict:
    """A config in the field names SAELens < 6 writes (and SAELens 6 still reads)."""
    return {
        "architecture": "standard",
        "d_in": 6,
        "d_sae": 10,
        "dtype": "float32",
        "device": "cpu",
        "model_name": "gpt2-small",
        "hook_name": hook_name,
        "hook_layer": 3,
        "hook_head_index": None,
        "activation_fn_str": "relu",
        "activation_fn_kwargs": {},
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "normalize_activations": "none",
        "context_size": 128,
        "prepend_bos": True,
        **extra,
    }


# --- loaders ----------------------------------------------------------------------------------------------------


def test_gemmascope_npz_is_jumprelu_without_b_dec_subtraction(tmp_path: Path) -> None:
    w = _weights(6, 10)
    path = tmp_path / "layer_7" / "width_16k" / "average_l0_5" / "params.npz"
    path.parent.mkdir(parents=True)
    np.savez(path, **w)  # type: ignore[arg-type]  # numpy stubs: **arrays
    sae = load_sae(path)
    assert (sae.cfg.layer, sae.cfg.hook, sae.cfg.activation) == (7, "resid_post", "jumprelu")
    x = RNG.normal(size=(20, 6)).astype(np.float32)
    f_np, rec_np = _jumprelu_np(x, w, subtract_b_dec=False)
    f = sae.encode(torch.from_numpy(x)).detach().numpy()
    assert 0 < (f_np > 0).mean() < 1  # some features fire, some do not: the threshold is exercised
    np.testing.assert_allclose(f, f_np, atol=1e-5)
    np.testing.assert_allclose(sae(torch.from_numpy(x)).detach().numpy(), rec_np, atol=1e-4)
    assert torch.equal(sae.threshold, torch.from_numpy(w["threshold"]))


def test_gemmascope_layer_and_hook(tmp_path: Path) -> None:
    path = tmp_path / "params.npz"
    lower = {("w_enc" if k == "W_enc" else k): v for k, v in _weights(6, 10).items()}  # GemmaScope's lower-case key
    np.savez(path, **lower)  # type: ignore[arg-type]
    with pytest.raises(SteerkitError, match="layer"):
        load_gemmascope_npz(path)
    sae = load_sae(path, layer=4, hook="resid_pre")
    assert (sae.cfg.layer, sae.cfg.hook) == (4, "resid_pre")
    mlp = tmp_path / "gemma-scope-2b-pt-mlp" / "layer_3" / "params.npz"
    mlp.parent.mkdir(parents=True)
    np.savez(mlp, **_weights(6, 10))  # type: ignore[arg-type]
    with pytest.raises(SteerkitError, match="residual"):
        load_sae(mlp)


def test_saelens_pre6_relu_dir(tmp_path: Path) -> None:
    w = {k: v for k, v in _weights(6, 10, seed=1).items() if k != "threshold"}
    directory = _write_saelens(tmp_path / "sae", _pre6_cfg("blocks.3.hook_resid_pre"), w)
    sae = load_saelens(directory)
    assert (sae.cfg.layer, sae.cfg.hook, sae.cfg.activation, sae.cfg.model) == (3, "resid_pre", "relu", "gpt2-small")
    x = RNG.normal(size=(20, 6)).astype(np.float32)
    f_np = np.maximum((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 0.0)
    np.testing.assert_allclose(sae.encode(torch.from_numpy(x)).detach().numpy(), f_np, atol=1e-5)
    np.testing.assert_allclose(
        sae(torch.from_numpy(x)).detach().numpy(), f_np @ w["W_dec"] + w["b_dec"], atol=1e-4, rtol=1e-5
    )


def test_saelens_v6_jumprelu_without_b_dec_and_topk(tmp_path: Path) -> None:
    w = _weights(6, 10, seed=2)
    cfg = {
        "architecture": "jumprelu",
        "d_in": 6,
        "d_sae": 10,
        "dtype": "float32",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "metadata": {"hook_name": "blocks.5.hook_resid_post", "model_name": "gemma-2-2b", "sae_lens_version": "6.5.0"},
    }
    sae = load_sae(_write_saelens(tmp_path / "jump", cfg, w))
    assert (sae.cfg.layer, sae.cfg.hook, sae.cfg.activation) == (5, "resid_post", "jumprelu")
    x = RNG.normal(size=(20, 6)).astype(np.float32)
    f_np, rec_np = _jumprelu_np(x, w, subtract_b_dec=False)
    np.testing.assert_allclose(sae.encode(torch.from_numpy(x)).detach().numpy(), f_np, atol=1e-5)
    np.testing.assert_allclose(sae(torch.from_numpy(x)).detach().numpy(), rec_np, atol=1e-4)

    topk_cfg = {**cfg, "architecture": "topk", "k": 3, "apply_b_dec_to_input": True}
    sae_k = load_sae(_write_saelens(tmp_path / "topk", topk_cfg, {k: v for k, v in w.items() if k != "threshold"}))
    assert (sae_k.cfg.activation, sae_k.cfg.k) == ("topk", 3)
    assert int((sae_k.encode(torch.from_numpy(x)) > 0).sum(-1).max()) <= 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hook_name": "blocks.3.hook_mlp_out"}, "hook_mlp_out"),
        ({"normalize_activations": "expected_average_only_in"}, "normalises"),
        ({"architecture": "gated"}, "gated"),
        ({"hook_head_index": 2, "hook_name": "blocks.3.hook_resid_pre"}, "head"),
    ],
)
def test_saelens_unsupported(tmp_path: Path, change: dict, message: str) -> None:
    w = {k: v for k, v in _weights(6, 10).items() if k != "threshold"}
    directory = _write_saelens(tmp_path / "sae", _pre6_cfg("blocks.3.hook_resid_pre") | change, w)
    with pytest.raises(SteerkitError, match=message):
        load_sae(directory)


def test_load_sae_asserted_hook_and_missing_sources(tmp_path: Path) -> None:
    w = {k: v for k, v in _weights(6, 10).items() if k != "threshold"}
    directory = _write_saelens(tmp_path / "sae", _pre6_cfg("blocks.3.hook_resid_pre"), w)
    assert load_sae(directory, layer=3, hook="resid_pre").cfg.layer == 3
    with pytest.raises(SteerkitError, match=r"blocks\.3\.hook_resid_pre.*blocks\.3\.hook_resid_post"):
        load_sae(directory, hook="resid_post")
    with pytest.raises(SteerkitError, match="no SAE"):
        load_sae(tmp_path / "nothing")
    with pytest.raises(SteerkitError, match="cannot fetch"):  # HF_HUB_OFFLINE (conftest): nothing is downloaded
        load_sae("steerkit-test/not-a-repo/layer_1/params")


@pytest.mark.parametrize("activation", ["relu", "jumprelu", "topk"])
def test_save_load_round_trip(tmp_path: Path, activation: Activation) -> None:
    k = 4 if activation == "topk" else None
    cfg = SAEConfig(d_in=6, d_sae=10, activation=activation, k=k, layer=2, model="tiny-llama")
    sae = SAE.from_tensors(cfg, {k: torch.from_numpy(v) for k, v in _weights(6, 10, seed=3).items()})
    loaded = load_sae(save_saelens(sae, tmp_path / "out"))
    assert loaded.cfg == SAEConfig(**{**cfg.to_dict(), "source": str(tmp_path / "out")})
    x = torch.randn(30, 6)
    assert torch.equal(loaded(x), sae(x))
    assert SAEConfig.from_dict(cfg.to_dict()) == cfg


# --- the SAE class ----------------------------------------------------------------------------------------------


def test_config_validation() -> None:
    with pytest.raises(SteerkitError, match="k"):
        SAEConfig(d_in=4, d_sae=8, activation="topk")
    with pytest.raises(SteerkitError, match="only meaningful"):
        SAEConfig(d_in=4, d_sae=8, activation="relu", k=2)
    with pytest.raises(SteerkitError, match="resid_mid"):
        SAEConfig(d_in=4, d_sae=8, hook="resid_mid")  # type: ignore[arg-type]
    with pytest.raises(SteerkitError, match="d_sae"):
        SAEConfig(d_in=4, d_sae=0)
    with pytest.raises(SteerkitError, match="typo"):
        SAEConfig.from_dict({"d_in": 4, "d_sae": 8, "typo": 1})


def test_topk_keeps_exactly_the_k_largest() -> None:
    cfg = SAEConfig(d_in=5, d_sae=12, activation="topk", k=3)
    w = {k: torch.from_numpy(v) for k, v in _weights(5, 12, seed=4).items()}
    w["b_enc"] = torch.full((12,), 50.0)  # every pre-activation positive: relu cannot zero a kept one
    sae = SAE.from_tensors(cfg, w)
    x = torch.randn(40, 5)
    f = sae.encode(x)
    assert ((f > 0).sum(-1) == 3).all()
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    expected = torch.zeros_like(pre).scatter(-1, pre.topk(3).indices, pre.topk(3).values)
    torch.testing.assert_close(f, expected)


def test_steering_refuses_other_hook_points() -> None:
    sae = SAE(SAEConfig(d_in=4, d_sae=8, layer=2, hook="resid_post"))
    with pytest.raises(SteerkitError, match=r"blocks\.2\.hook_resid_post.*blocks\.2\.hook_resid_pre"):
        sae.steering(0, 1.0, hook="resid_pre")
    with pytest.raises(SteerkitError, match=r"blocks\.2\.hook_resid_post.*blocks\.3\.hook_resid_post"):
        sae.steering(0, 1.0, layer=3)
    with pytest.raises(SteerkitError, match="feature 8"):
        sae.steering(8, 1.0)
    assert sae.steering(1, 2.0, layer=2, hook="resid_post").hook == "resid_post"


def test_decoder_direction_is_a_raw_copy() -> None:
    w = {k: torch.from_numpy(v) for k, v in _weights(4, 8).items()}
    sae = SAE.from_tensors(SAEConfig(d_in=4, d_sae=8), w)
    d = sae.decoder_direction(5)
    assert d.dtype == torch.float32 and torch.equal(d, w["W_dec"][5])
    d += 1.0
    assert torch.equal(sae.W_dec[5].detach(), w["W_dec"][5])


def _add_pre_hook(vector: torch.Tensor) -> Callable:
    def hook(module: object, args: tuple, kwargs: dict) -> tuple:
        if args:
            return (args[0] + vector, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + vector}

    return hook


def test_steering_equals_hand_written_hook(tiny: Callable[[str], LoadedModel]) -> None:
    lm = tiny("llama")
    d = lm.d_model
    w = {k: torch.from_numpy(v) for k, v in _weights(d, 3 * d, seed=5).items()}
    sae = SAE.from_tensors(SAEConfig(d_in=d, d_sae=3 * d, layer=1, hook="resid_pre"), w)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad(), steer(lm, sae.steering(7, 3.0)):
        steered = lm.model(input_ids=ids).logits
    handle = lm.layers()[1].register_forward_pre_hook(_add_pre_hook(3.0 * w["W_dec"][7]), with_kwargs=True)
    try:
        with torch.no_grad():
            by_hand = lm.model(input_ids=ids).logits
    finally:
        handle.remove()
    with torch.no_grad():
        plain = lm.model(input_ids=ids).logits
    assert isinstance(sae.steering(7, 3.0), ResidualAdd)
    assert torch.equal(steered, by_hand)
    assert not torch.allclose(steered, plain)


# --- metrics, training, splicing --------------------------------------------------------------------------------


def _identity_sae(d: int, layer: int = 0, hook: str = "resid_post") -> SAE:
    """relu(x) - relu(-x) = x: a perfect 2d-feature SAE."""
    eye = torch.eye(d)
    tensors = {
        "W_enc": torch.cat([eye, -eye], 1),
        "b_enc": torch.zeros(2 * d),
        "W_dec": torch.cat([eye, -eye], 0),
        "b_dec": torch.zeros(d),
    }
    return SAE.from_tensors(SAEConfig(d_in=d, d_sae=2 * d, layer=layer, hook=hook), tensors)  # type: ignore[arg-type]


def test_sae_metrics_hand_case() -> None:
    x = torch.randn(200, 4)
    x[:, 0] = x[:, 0].abs() + 0.1  # coordinate 0 is always positive: feature 4 (= -e0) never fires
    m = sae_metrics(_identity_sae(4), x)
    assert m["mse"] == pytest.approx(0.0, abs=1e-10)
    assert m["explained_variance"] == pytest.approx(1.0)
    assert m["l0"] == pytest.approx(4.0)  # one of each ± pair per coordinate
    assert m["dead_fraction"] == pytest.approx(1 / 8)
    zero = SAE(SAEConfig(d_in=4, d_sae=8))  # reconstructs 0: EV = 1 - Σx² / Σ(x - mean)²
    expected_ev = 1 - float((x.double() ** 2).sum() / ((x.double() - x.double().mean(0)) ** 2).sum())
    assert sae_metrics(zero, x)["explained_variance"] == pytest.approx(expected_ev)
    assert sae_metrics(zero, x)["dead_fraction"] == 1.0


def _planted(n: int, d_in: int = 32, n_feat: int = 64, active: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    dictionary = torch.randn(n_feat, d_in, generator=g)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    idx = torch.rand(n, n_feat, generator=g).argsort(1)[:, :active]
    coef = torch.zeros(n, n_feat).scatter(1, idx, 1 + 2 * torch.rand(n, active, generator=g))
    return coef @ dictionary + 0.5, dictionary


def _train_planted(activation: str, l1: float = 0.0) -> tuple[SAE, list[dict], torch.Tensor, torch.Tensor]:
    x, dictionary = _planted(6_000)
    cfg = SAEConfig(d_in=32, d_sae=128, activation=activation, k=4 if activation == "topk" else None)  # type: ignore[arg-type]
    train = TrainConfig(lr=1e-2, batch_size=256, epochs=10, l1_coefficient=l1, dead_after_tokens=5000, seed=1)
    records: list[dict] = []
    sae, history = train_sae(x[:4_000], cfg, train, on_step=records.append)
    assert records == history and history[-1]["step"] == train.n_steps(4_000) - 1
    return sae, history, x[4_000:], dictionary


def test_train_topk_sae_recovers_a_planted_dictionary() -> None:
    sae, _, held_out, dictionary = _train_planted("topk")
    m = sae_metrics(sae, held_out)
    assert m["explained_variance"] > 0.9 and m["l0"] == 4.0
    unit = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    best = (dictionary @ unit.T.detach()).max(1).values
    assert (best > 0.9).float().mean() >= 0.9
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(128))  # unit rows survive the scale folding
    again, _, _, _ = _train_planted("topk")
    assert torch.equal(again.W_dec, sae.W_dec)  # seeded


def test_train_relu_sae_l1_buys_sparsity() -> None:
    """ReLU + L1 converges slowly on this toy (recovery needs ~10x the steps; see the readme): check the L1 path."""
    dense, _, held_out, _ = _train_planted("relu", l1=0.0)
    sparse, history, _, _ = _train_planted("relu", l1=0.3)
    assert history[-1]["sparsity_loss"] > 0
    m_dense, m_sparse = sae_metrics(dense, held_out), sae_metrics(sparse, held_out)
    assert m_sparse["explained_variance"] > 0.9
    assert m_sparse["l0"] < 0.8 * m_dense["l0"]


def test_train_sae_rejects_bad_input() -> None:
    cfg = SAEConfig(d_in=4, d_sae=8)
    with pytest.raises(SteerkitError, match=r"\[n, 4\]"):
        train_sae(torch.randn(10, 5), cfg, TrainConfig())
    with pytest.raises(SteerkitError, match="NaN"):
        train_sae(torch.full((10, 4), float("nan")), cfg, TrainConfig())
    with pytest.raises(SteerkitError, match="jumprelu"):
        train_sae(torch.randn(10, 4), SAEConfig(d_in=4, d_sae=8, activation="jumprelu"), TrainConfig())
    with pytest.raises(SteerkitError, match="lr"):
        TrainConfig(lr=0.0)


def test_splice_with_a_perfect_sae_leaves_logits_unchanged(tiny: Callable[[str], LoadedModel]) -> None:
    lm = tiny("llama")
    sae = _identity_sae(lm.d_model, layer=1, hook="resid_post")
    prompt = encode(lm.tokenizer, "p", "the quick brown fox jumps over the lazy dog")
    ids = torch.tensor([prompt.ids])
    with torch.no_grad():
        plain = lm.model(input_ids=ids).logits
        with steer(lm, SAESplice(sae, "identity"), prompts=[prompt]):
            ident = lm.model(input_ids=ids).logits
        with steer(lm, SAESplice(sae), prompts=[prompt]):
            spliced = lm.model(input_ids=ids).logits
        with steer(lm, SAESplice(sae, "zero"), prompts=[prompt]):
            zeroed = lm.model(input_ids=ids).logits
    assert torch.equal(ident, plain)
    torch.testing.assert_close(spliced, plain, atol=1e-5, rtol=1e-5)
    assert torch.equal(zeroed[:, 0], plain[:, 0])  # position 0 is never spliced
    assert not torch.allclose(zeroed[:, 1:], plain[:, 1:])
    summary, rows = spliced_loss(lm, ["a b c d e f g h", "one two three four five six"], sae, batch_size=2)
    assert summary["identity_max_abs_ce_diff"] == 0.0
    assert summary["ce_sae"] == pytest.approx(summary["ce_clean"], abs=1e-4)
    assert summary["fraction_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert summary["ce_zero"] != pytest.approx(summary["ce_clean"])
    assert [r["id"] for r in rows] == ["p0", "p1"]
    with pytest.raises(SteerkitError, match="d_in"):
        with steer(lm, SAESplice(_identity_sae(lm.d_model + 1))):
            pass
