"""Scale-search objective `kl`: how far a scale moves the next-token distributions where the edit acts.

Design note: the objective used to be the mean KL(scale 1 || scale s) at the last *prompt* token. For an edge rule
whose edited queries all come after the prompt (`generated_to_doctest`: generated tokens attending to the doc test)
that position is untouched by construction, so the KL was exactly 0 at every scale and a search optimised a
constant. The objective is now `kl_generated_mean` of `steerkit.attention.applied_dose`: the KL over the generated
positions with the baseline continuation teacher-forced, under the identity edit and the steered one (0 at scale
1.0 by construction, and it moves for every rule whose edges the continuation reaches). The baseline arm is
generated once per study (the caller sets `base`, reused across workers by key like `NewTestGain`'s). The
last-prompt-token KL and the applied edge shares are logged beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from steerkit.attention import n50
from steerkit.attention.applied_dose import applied_dose, continuations_of
from steerkit.attention.edge_rules import attention_scale
from steerkit.attention.n50_arms import declared_split
from steerkit.core.checks import require_identity
from steerkit.core.generation import Prompt
from steerkit.core.models import LoadedModel
from steerkit.core.records import Record
from steerkit.errors import SteerkitError


class KlGain:
    """Scale-search objective: mean KL(scale 1 || scale s) over the baseline continuation's generated positions.

    `base` is the baseline arm's records (`n50.run_arm` with `edit_1`, cut at `split`), set by the caller before
    the first trial; `record(metrics, rows)` receives what the trial run logs.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        prompts: Sequence[Prompt],
        layer: int,
        edge_rule: str,
        grid: Sequence[float],
        batch: int,
        record: Callable[[Record, list[Record]], None],
    ) -> None:
        self.loaded, self.prompts, self.layer, self.edge_rule = loaded, list(prompts), layer, edge_rule
        self.grid, self.batch, self.record = list(grid), batch, record
        self.edit_1 = attention_scale(edge_rule, layer, 1.0)
        self.split = declared_split(loaded, self.prompts, self.edit_1)  # one edge rule: the cut of every scale
        self.base: list[Record] = []

    def __call__(self, trial: Any) -> float:
        scale = trial.suggest_float("scale", min(self.grid), max(self.grid))
        edit_s = attention_scale(self.edge_rule, self.layer, scale)
        checks = n50.identity_and_kl(self.loaded, self.prompts, self.edit_1, edit_s, False, self.batch, self.split)
        require_identity(checks)
        if not self.base:
            raise SteerkitError("kl objective: no baseline arm to teacher-force (set KlGain.base first)")
        cont = continuations_of(self.base)
        applied, _ = applied_dose(
            self.loaded, self.prompts, cont, self.edit_1, edit_s, layer=self.layer, batch_size=self.batch
        )
        if applied["n_dose_prompts"] == 0:
            raise SteerkitError("kl objective: the baseline generated no token for any prompt (max_new_tokens?)")
        self.record({**checks, **applied, "dose": scale}, [])
        trial.set_user_attr("kl_generated_max", applied["kl_generated_max"])
        trial.set_user_attr("kl_last_token_mean", checks["kl_last_token_mean"])
        return applied["kl_generated_mean"]
