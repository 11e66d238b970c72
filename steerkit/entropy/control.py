"""The mechanism check of `entropy_control`: the same seed values through every source give the same text.

Design note: each (prompt, k) cell is sampled once per source with the same 32-bit seed value. If a source's
identity could reach the text by any path other than the seed value, the outputs of that group would differ, so
`identical_fraction` must be 1 and `identity_n_differing_groups` (an identity figure, enforced by the script) 0.
As a contrast, `distinct_seed_fraction` is the share of pairs of one source's outputs for one prompt with
*different* seed values whose texts differ: the seed value itself does change the text, so an identical result
is not the trivial one of a model that ignores its seed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from steerkit.entropy.design import identical_fraction
from steerkit.errors import SteerkitError

# The controls of `entropy_seeds` and `direct_injection` and the value each must have exactly.
MUST_BE = {"fixed_identical_fraction": 1.0, "replay_identical_fraction": 1.0}
REPEATED_BLOCKS = "stream_repeated_blocks"  # `stream_repeated_blocks_<source>`: must be 0


def control_metrics(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """`identical_fraction` across sources per (prompt, sample k), `identity_n_differing_groups`, `n_groups`;
    `distinct_seed_fraction` over the first source's pairs of one prompt with different seed values (NaN: no
    such pair), and `n_seed_pairs`. Records: `source`, `prompt`, `sample`, `seed`, `token_ids`."""
    across: dict[tuple[str, int], list[list[int]]] = defaultdict(list)
    for r in records:
        across[(r["prompt"], r["sample"])].append(list(r["token_ids"]))
    first = records[0]["source"] if records else None
    per_prompt: dict[str, list[tuple[int, list[int]]]] = defaultdict(list)
    for r in records:
        if r["source"] == first:
            per_prompt[r["prompt"]].append((r["seed"], list(r["token_ids"])))
    pairs = [(a, b) for outs in per_prompt.values() for i, a in enumerate(outs) for b in outs[i + 1 :] if a[0] != b[0]]
    differing = sum(any(seq != seqs[0] for seq in seqs) for seqs in across.values())
    return {
        "identical_fraction": identical_fraction(across),
        "identity_n_differing_groups": differing,
        "n_groups": len(across),
        "distinct_seed_fraction": sum(a[1] != b[1] for a, b in pairs) / len(pairs) if pairs else float("nan"),
        "n_seed_pairs": len(pairs),
    }


def require_controls(metrics: dict[str, float]) -> None:
    """Fail the run unless every control it logged holds exactly (logged first, so the figure stays readable).

    `fixed_identical_fraction` (the fixed source gives every sample of a prompt the same seed or key, so the same
    text) and `replay_identical_fraction` (a stream regenerated from its logged key) must be 1;
    `stream_repeated_blocks_<source>` must be 0. A control that was not run (no `fixed` source) is not required.

    Raises:
        SteerkitError: naming the first control that does not hold and its value.
    """
    for key, value in sorted(metrics.items()):
        want = MUST_BE.get(key, 0.0 if key.startswith(REPEATED_BLOCKS) else None)
        if want is not None and value != want:
            raise SteerkitError(f"control failed: {key} = {value!r} (must be exactly {want:g})")


__all__ = ["control_metrics", "require_controls"]
