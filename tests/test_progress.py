"""steerkit.core.progress: one bar helper, off when stderr is not a terminal or STEERKIT_PROGRESS=0, on with 1."""

from __future__ import annotations

import io
import re

from steerkit.core import progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_follows_the_terminal_and_the_environment(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not progress.enabled() and progress.progress([1, 2], desc="x").disable
    monkeypatch.setattr("sys.stderr", Tty())
    assert progress.enabled() and not progress.enabled(enable=False)
    monkeypatch.setenv(progress.ENV, "0")
    assert not progress.enabled()
    monkeypatch.setattr("sys.stderr", io.StringIO())
    monkeypatch.setenv(progress.ENV, "1")
    assert progress.enabled() and list(progress.progress([1, 2], desc="x")) == [1, 2]


def test_trials_show_one_bar_on_a_terminal(monkeypatch, tmp_path):
    """run_study advances a `trials <study>` bar once per trial (written to stderr when enabled)."""
    from steerkit.search import StudyConfig, run_study

    err = Tty()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setenv(progress.ENV, "1")
    config = StudyConfig("bars", f"sqlite:///{tmp_path}/o.db", n_trials=3)
    run_study(lambda t: t.suggest_float("x", 0, 1), config, track=False)
    assert "trials bars" in err.getvalue() and "3/3" in err.getvalue()


def test_sandbox_batches_logit_passes_and_activations_show_a_bar_on_a_terminal(monkeypatch, tiny):
    """Loops a user waits on outside `generate`: sandboxed programs, next-token logit and activation passes."""
    from steerkit.core.activations import last_token_residuals
    from steerkit.core.generation import Prompt, next_token_logits
    from steerkit.execution import run_many

    err = Tty()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setenv(progress.ENV, "1")
    results = run_many([("x = 1", ["assert x == 1"])] * 3, workers=1)
    assert [r.status for r in results] == ["passed"] * 3
    assert re.search(r"sandbox: 100%[^\r\n]*3/3", err.getvalue())
    next_token_logits(tiny("llama"), ["a", "b c", "d e f", "g"], batch_size=2)
    assert re.search(r"next-token logits: 100%[^\r\n]*2/2", err.getvalue())
    last_token_residuals(tiny("llama"), [Prompt(f"p{i}", t) for i, t in enumerate("abc")], [1], batch_size=1)
    assert re.search(r"activations: 100%[^\r\n]*3/3", err.getvalue())
