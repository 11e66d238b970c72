"""Tests for steerkit.metrics: divergences against scipy, preservation on hand-written Rust."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy

from steerkit.errors import SteerkitError
from steerkit.metrics import (
    TEST_MARKERS,
    has_test_marker,
    kl_divergence,
    rust_test_preservation,
    top1_changed,
    topk_overlap,
)

# --- KL divergence -------------------------------------------------------------


def test_kl_matches_scipy_entropy() -> None:
    gen = torch.Generator().manual_seed(0)
    p_logits = torch.randn(3, 4, 50, generator=gen) * 3
    q_logits = torch.randn(3, 4, 50, generator=gen) * 3
    kl = kl_divergence(p_logits, q_logits)
    p = softmax(p_logits.double().numpy(), axis=-1)
    q = softmax(q_logits.double().numpy(), axis=-1)
    assert kl.shape == (3, 4) and kl.dtype == torch.float64
    np.testing.assert_allclose(kl.numpy(), entropy(p, q, axis=-1), rtol=1e-10)


def test_kl_along_other_dim() -> None:
    gen = torch.Generator().manual_seed(1)
    p_logits, q_logits = torch.randn(7, 2, generator=gen), torch.randn(7, 2, generator=gen)
    kl = kl_divergence(p_logits, q_logits, dim=0)
    expected = entropy(softmax(p_logits.double().numpy(), axis=0), softmax(q_logits.double().numpy(), axis=0))
    np.testing.assert_allclose(kl.numpy(), expected, rtol=1e-10)


def test_kl_is_exactly_zero_at_identity() -> None:
    logits = (torch.randn(6, 300, generator=torch.Generator().manual_seed(2)) * 10).to(torch.bfloat16)
    assert torch.equal(kl_divergence(logits, logits.clone()), torch.zeros(6, dtype=torch.float64))


def test_kl_is_non_negative_and_asymmetric() -> None:
    gen = torch.Generator().manual_seed(3)
    p_logits = torch.randn(200, 20, generator=gen) * 5
    q_logits = p_logits + 1e-6 * torch.randn(200, 20, generator=gen)
    assert (kl_divergence(p_logits, q_logits) >= 0).all()
    # Two-token case in closed form: KL([.9, .1] || [.5, .5]) = .9 ln 1.8 + .1 ln .2.
    p2, q2 = torch.tensor([0.9, 0.1]).log(), torch.tensor([0.5, 0.5]).log()
    assert kl_divergence(p2, q2).item() == pytest.approx(0.9 * np.log(1.8) + 0.1 * np.log(0.2), rel=1e-6)
    assert kl_divergence(q2, p2).item() != pytest.approx(kl_divergence(p2, q2).item())


def test_kl_with_masked_tokens() -> None:
    inf = float("inf")
    p_logits = torch.tensor([[0.0, 1.0, -inf], [0.0, 1.0, 2.0]], dtype=torch.float64)
    q_logits = torch.tensor([[0.5, 0.0, 0.3], [0.0, 1.0, -inf]], dtype=torch.float64)
    kl = kl_divergence(p_logits, q_logits)
    # P puts zero mass on a token: that token contributes 0 (scipy agrees).
    p0 = softmax(np.array([0.0, 1.0, -np.inf]))
    assert kl[0].item() == pytest.approx(entropy(p0, softmax(np.array([0.5, 0.0, 0.3]))), rel=1e-10)
    # Q puts zero mass on a token P can emit: infinite divergence.
    assert kl[1].item() == inf


def test_kl_rejects_hidden_state_vs_logit_shapes() -> None:
    hidden, logits = torch.zeros(5, 576), torch.zeros(5, 49152)
    with pytest.raises(ValueError, match=r"\(5, 576\) and \(5, 49152\)"):
        kl_divergence(hidden, logits)


def test_kl_vocab_size_check() -> None:
    x = torch.zeros(2, 576)
    with pytest.raises(ValueError, match="vocab_size=49152, got 576"):
        kl_divergence(x, x, vocab_size=49152)
    assert torch.equal(kl_divergence(x, x, vocab_size=576), torch.zeros(2, dtype=torch.float64))


def test_kl_rejects_bad_dim() -> None:
    with pytest.raises(ValueError, match="got 2"):
        kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3), dim=2)


# --- top-1 / top-k ---------------------------------------------------------------


def test_top1_changed() -> None:
    p = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    q = torch.tensor([[0.0, 9.0, 1.0], [0.0, 0.0, 2.0], [1.0, 1.0, 0.0]])
    assert top1_changed(p, q).tolist() == [False, True, False]


def test_top1_changed_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="identical shapes"):
        top1_changed(torch.zeros(2, 3), torch.zeros(3, 2))


def test_topk_overlap_closed_form() -> None:
    p = torch.tensor(
        [
            [4.0, 3.0, 2.0, 1.0],  # top2 {0, 1}
            [4.0, 3.0, 2.0, 1.0],  # top2 {0, 1}
            [4.0, 3.0, 2.0, 1.0],  # top2 {0, 1}
        ]
    )
    q = torch.tensor(
        [
            [9.0, 8.0, 0.0, 0.5],  # top2 {0, 1}: full overlap
            [1.0, 2.0, 3.0, 4.0],  # top2 {3, 2}: none
            [1.0, 5.0, 9.0, 0.0],  # top2 {2, 1}: one shared
        ]
    )
    assert topk_overlap(p, q, 2).tolist() == [1.0, 0.0, 0.5]
    assert topk_overlap(p, q, 4).tolist() == [1.0, 1.0, 1.0]
    assert topk_overlap(p, q, 1).tolist() == [1.0, 0.0, 0.0]


def test_topk_overlap_matches_set_intersection() -> None:
    gen = torch.Generator().manual_seed(4)
    p, q = torch.randn(2, 5, 40, generator=gen), torch.randn(2, 5, 40, generator=gen)
    got = topk_overlap(p, q, 7)
    for idx in np.ndindex(2, 5):
        sp = set(np.argsort(-p[idx].numpy())[:7].tolist())
        sq = set(np.argsort(-q[idx].numpy())[:7].tolist())
        assert got[idx].item() == pytest.approx(len(sp & sq) / 7)


@pytest.mark.parametrize("k", [0, 5, -1])
def test_topk_overlap_rejects_bad_k(k: int) -> None:
    with pytest.raises(ValueError, match=rf"k must be an integer in \[1, 4\], got {k}"):
        topk_overlap(torch.zeros(4), torch.zeros(4), k)


# --- Rust test preservation ---------------------------------------------------------

PROMPT = """/// Adds two integers.
///
/// #[test]
/// fn test_add() {
///     assert_eq!(add(2, 3), 5);
/// }
fn add(a: i32, b: i32) -> i32 {
"""


def _check(completion: str, has: bool, new: bool, copied: bool, markers: tuple[str, ...]) -> None:
    res = rust_test_preservation(PROMPT, completion)
    assert (res.has_test, res.new_test, res.copied_test, res.markers) == (has, new, copied, markers)
    assert res.has_test == (res.new_test or res.copied_test)


def test_no_test() -> None:
    _check("    a + b\n}\n", False, False, False, ())


def test_echo_of_doc_test_with_doc_comment() -> None:
    completion = "    a + b\n}\n\n/// #[test]\n/// fn test_add() {\n///     assert_eq!(add(2, 3), 5);\n/// }\n"
    _check(completion, True, False, True, ("#[test]", "assert_eq!", "fn test_"))


def test_echo_of_doc_test_as_code() -> None:
    completion = "    a + b\n}\n\n#[test]\nfn test_add() {\n        assert_eq!(add(2, 3),   5);\n}\n"
    _check(completion, True, False, True, ("#[test]", "assert_eq!", "fn test_"))


def test_echo_with_inner_doc_prefix() -> None:
    _check("    a + b\n}\n//!   assert_eq!(add(2, 3), 5);\n", True, False, True, ("assert_eq!",))


def test_new_assertion_with_different_args() -> None:
    _check("    a + b\n}\n    assert_eq!(add(-1, 1), 0);\n", True, True, False, ("assert_eq!",))


def test_new_test_block() -> None:
    completion = "    a + b\n}\n\n#[test]\nfn test_x() {\n    assert!(add(1, 1) == 2);\n}\n"
    # The bare `#[test]` attribute line equals the prompt's, so this also counts as copied.
    _check(completion, True, True, True, ("#[test]", "assert!", "fn test_"))


def test_assert_vs_assert_eq_markers() -> None:
    _check("    assert_eq!(add(1, 2), 3);\n", True, True, False, ("assert_eq!",))
    _check("    assert!(add(1, 2) == 3);\n", True, True, False, ("assert!",))
    assert "assert!" not in "assert_eq!"


def test_has_test_marker_substring_semantics() -> None:
    assert TEST_MARKERS == ("#[test]", "assert_eq!", "assert!", "fn test_")
    assert has_test_marker("x; // fn test_helper_thing")
    assert has_test_marker("debug_assert!(x)")  # substring, as the seed did
    assert not has_test_marker("assert_ne!(a, b); #[cfg(test)] fn tests()")


def test_preservation_to_dict_and_input_check() -> None:
    res = rust_test_preservation(PROMPT, "assert!(true);")
    assert res.to_dict() == {"has_test": True, "new_test": True, "copied_test": False, "markers": ["assert!"]}
    with pytest.raises(ValueError, match="completion must be a str, got NoneType"):
        rust_test_preservation(PROMPT, None)  # type: ignore[arg-type]


def test_bad_input_raises_steerkit_error_with_short_message() -> None:
    with pytest.raises(SteerkitError, match=r"^p_logits must be a tensor .* got ndarray of shape \(2, 3\)$"):
        kl_divergence(np.zeros((2, 3)), torch.zeros(2, 3))  # type: ignore[arg-type]
