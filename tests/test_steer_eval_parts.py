"""The pieces under `steer_eval`: prompt tables (corpora.loader), steering from files / prompt sets / an SAE / an edge
rule, scorers, `load_model` options and `LoadedModel.from_hf`, and the `steerkit` console script."""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from steerkit import cli
from steerkit.core._tiny import tiny_model
from steerkit.core.generation import next_token_logits
from steerkit.core.models import LoadedModel, hf_load_kwargs, load_model
from steerkit.corpora.loader import load_prompt_table, text_id
from steerkit.errors import SteerkitError
from steerkit.sae import SAE, SAEConfig
from steerkit.sae.loaders import save_saelens
from steerkit.steer_eval import build_steering, load_vector, resolve_scorer

ROOT = Path(__file__).resolve().parents[1]


# --- prompt tables ----------------------------------------------------------------------------------------------


def test_csv_jsonl_and_corpus_files_read_the_same_way(tmp_path):
    (tmp_path / "p.csv").write_text("id,text,label\na,first prompt,1\nb,second prompt,0\n")
    table = load_prompt_table(tmp_path / "p.csv", text_field="text", fields=["label"])
    assert [(r.id, r.text, r.fields) for r in table.rows] == [
        ("a", "first prompt", {"label": "1"}),
        ("b", "second prompt", {"label": "0"}),
    ]
    assert table.sha256 == hashlib.sha256((tmp_path / "p.csv").read_bytes()).hexdigest() and table.id_source == "field"
    corpus = load_prompt_table(ROOT / "corpus" / "generation_prompts_n50.json")
    assert (
        len(corpus.rows) == 50
        and corpus.rows[0].id
        == json.loads((ROOT / "corpus" / "generation_prompts_n50.json").read_text())["prompts"][0]["id"]
    )


def test_ids_without_an_id_field_are_text_hashes_stable_under_reordering(tmp_path):
    texts = ["alpha", "beta", "gamma"]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"prompt": t}) for t in texts))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"prompt": t}) for t in reversed(texts)))
    a, b = load_prompt_table(tmp_path / "a.jsonl"), load_prompt_table(tmp_path / "b.jsonl")
    assert {r.id: r.text for r in a.rows} == {r.id: r.text for r in b.rows}
    assert (
        a.rows[0].id == hashlib.sha256(b"alpha").hexdigest()[:16] == text_id("alpha") and a.id_source == "text_sha256"
    )


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([{"id": "a", "prompt": "x"}, {"prompt": "y"}], "line 2: no 'id' (give every record an id, or none)"),
        ([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], "line 2: duplicate id 'a'"),
        ([{"prompt": "x"}, {"prompt": "x"}], "duplicate text (ids are text hashes)"),
        ([{"id": "a", "text": "x"}], "line 1: no non-empty text field 'prompt'"),
    ],
)
def test_bad_prompt_files_are_one_line_errors(tmp_path, lines, message):
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    with pytest.raises(SteerkitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_prompt_table(tmp_path / "p.jsonl")


# --- steering ---------------------------------------------------------------------------------------------------


def test_vector_files_pt_dict_npy_and_safetensors(tmp_path):
    v2, v3 = torch.arange(64.0), -torch.arange(64.0)
    torch.save({2: v2, 3: v3}, tmp_path / "layers.pt")  # steering-vectors' layer_activations
    np.save(tmp_path / "v.npy", v2.numpy())
    save_file({"a": v2, "b": v3}, str(tmp_path / "v.safetensors"))
    assert torch.equal(load_vector(tmp_path / "layers.pt", layer=3), v3)
    assert torch.equal(load_vector(tmp_path / "v.npy"), v2)
    assert torch.equal(load_vector(f"{tmp_path / 'v.safetensors'}#b"), v3)
    with pytest.raises(SteerkitError, match="holds 2 tensors and none for layer None: use #KEY"):
        load_vector(tmp_path / "v.safetensors")


def test_mean_diff_equals_the_difference_of_means_of_hidden_states(tiny, tmp_path):
    loaded = tiny("llama")
    pos, neg = ["I love this", "great work here", "what a joy"], ["I hate this", "awful work", "so sad today"]
    for name, texts in (("pos", pos), ("neg", neg)):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps({"prompt": t}) for t in texts))
    steering = build_steering(loaded, f"mean_diff={tmp_path / 'pos.jsonl'},{tmp_path / 'neg.jsonl'}", layers=[1])

    def last_hidden(text: str) -> torch.Tensor:  # independent path: HF's own hidden states, one prompt at a time
        ids = loaded.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            out = loaded.model(**ids, output_hidden_states=True)
        return out.hidden_states[2][0, -1].double()  # hidden_states[L + 1] = output of block L (resid_post)

    want = torch.stack([last_hidden(t) for t in pos]).mean(0) - torch.stack([last_hidden(t) for t in neg]).mean(0)
    assert torch.allclose(steering.vectors[1].double(), want, atol=1e-5)
    assert steering.interventions(0.0)[0].coef == 0.0 and steering.identity == 0.0


def test_sae_feature_is_the_decoder_row_at_the_saes_hook(tiny, tmp_path):
    cfg = SAEConfig(d_in=64, d_sae=8, activation="relu", layer=2, hook="resid_pre", model="tiny-llama")
    sae = SAE(cfg)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(8, 64, generator=torch.Generator().manual_seed(0)))
    save_saelens(sae, tmp_path / "sae")
    steering = build_steering(tiny("llama"), f"sae={tmp_path / 'sae'}:feature=5", layers=[])
    assert steering.layers == (2,) and steering.hook == "resid_pre"
    assert torch.equal(steering.vectors[2], sae.W_dec[5].detach())
    with pytest.raises(SteerkitError, match="acts at layer 2, not at layers \\[1\\]"):
        build_steering(tiny("llama"), f"sae={tmp_path / 'sae'}:feature=5", layers=[1])


def test_attention_rule_identity_is_scale_one_and_bit_exact(tiny):
    loaded = tiny("llama")
    steering = build_steering(loaded, "attention=from:fn->pattern:test", layers=[1, 2])
    prompts = ["/// #[test] check\nfn add(a: i32) -> i32 { a }"]
    plain = next_token_logits(loaded, prompts)
    assert steering.identity == 1.0
    assert torch.equal(next_token_logits(loaded, prompts, interventions=steering.interventions(1.0)), plain)
    assert not torch.equal(next_token_logits(loaded, prompts, interventions=steering.interventions(50.0)), plain)


def test_ablation_coef_is_alpha(tiny, tmp_path):
    torch.save(torch.ones(64), tmp_path / "d.pt")
    steering = build_steering(tiny("llama"), f"ablate={tmp_path / 'd.pt'}", layers=[1])
    assert steering.kind == "ablate" and steering.interventions(1.0)[0].alpha == 1.0


def test_scorer_declarations():
    def annotated(output: str, prompt: dict) -> float:
        return 1.0

    def bare(output, prompt):
        return True

    assert resolve_scorer(annotated).outcome == "continuous"
    assert resolve_scorer(bare, outcome="binary").outcome == "binary"
    with pytest.raises(SteerkitError, match="annotate its return as bool or float"):
        resolve_scorer(bare)
    with pytest.raises(SteerkitError, match="scorer 'length' is continuous, but outcome='binary' was given"):
        resolve_scorer("length", outcome="binary")
    with pytest.raises(SteerkitError, match="built-in .* or module:function, got 'nonsense'"):
        resolve_scorer("nonsense")


# --- loading ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory) -> Path:
    model, tok = tiny_model("llama")
    folder = tmp_path_factory.mktemp("tiny-llama-dir")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_local_directory_loads_with_options_and_logs_its_weights_hash(saved_tiny):
    loaded = load_model(str(saved_tiny))
    weights = sorted(saved_tiny.glob("*.safetensors"))
    digest = hashlib.sha256()
    for file in weights:
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    assert loaded.source_sha256 == digest.hexdigest() and loaded.describe()["source_sha256"] == digest.hexdigest()
    model, tok = tiny_model("llama")
    wrapped = LoadedModel.from_hf(model, tok, spec="mine")
    assert wrapped.spec == "mine" and wrapped.n_layers == loaded.n_layers == 4 and wrapped.d_model == 64
    prompts = ["hello there", "fn main() {"]
    assert torch.equal(next_token_logits(loaded, prompts), next_token_logits(wrapped, prompts))
    eager = load_model(str(saved_tiny), attn_implementation="eager")
    assert eager.model.config._attn_implementation == "steerkit_eager"  # passed to from_pretrained, then wrapped
    assert torch.allclose(next_token_logits(eager, prompts), next_token_logits(wrapped, prompts), atol=1e-5)


def test_hf_load_kwargs_place_the_model_with_accelerate_on_cuda():
    cpu = hf_load_kwargs("cpu", torch.device("cpu"), torch.float32, revision="abc", attn_implementation="sdpa")
    assert cpu == {"dtype": torch.float32, "revision": "abc", "attn_implementation": "sdpa"}
    assert hf_load_kwargs("auto", torch.device("cuda"), torch.bfloat16)["device_map"] == "auto"
    assert hf_load_kwargs("cuda:1", torch.device("cuda:1"), torch.bfloat16)["device_map"] == {"": "cuda:1"}
    with pytest.raises(SteerkitError, match="attn_implementation must be sdpa or eager, got 'flash'"):
        hf_load_kwargs("cpu", torch.device("cpu"), torch.float32, attn_implementation="flash")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"revision": "main"}, "revision applies to Hugging Face models only, not to 'tiny-llama'"),
        ({"quantization": "3bit"}, "quantization must be one of none, 4bit, 8bit, got '3bit'"),
        ({"quantization": "4bit"}, "quantization='4bit' needs a CUDA device, got device 'cpu'"),
    ],
)
def test_bad_load_options_are_one_line_errors(kwargs, message):
    with pytest.raises(SteerkitError, match=message):
        load_model("tiny-llama", **kwargs)


# --- the console script -----------------------------------------------------------------------------------------


def test_console_script_is_installed_and_builds_the_mlflow_commands(tmp_path):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"steerkit": "steerkit.cli:main"}
    root = cli.project_root(ROOT / "steerkit")
    assert root == ROOT
    env = cli.project_env(root, {})
    assert env == {"MLFLOW_TRACKING_URI": f"sqlite:///{ROOT}/mlflow.db", "MLFLOW_EXPERIMENT_NAME": "steerkit"}
    run = cli.console_command(["run", "steer_eval", "-P", "scorer=length", "-P", "coef=2"], root, env)
    mlflow = [sys.executable, "-m", "mlflow"]
    assert run == [
        *mlflow,
        "run",
        str(ROOT),
        "-e",
        "steer_eval",
        "--env-manager",
        "local",
        "-P",
        "scorer=length",
        "-P",
        "coef=2",
    ]
    ui = cli.console_command(["ui", "--port", "5001"], root, env)
    assert ui == [
        *mlflow,
        "ui",
        "--backend-store-uri",
        env["MLFLOW_TRACKING_URI"],
        "--host",
        "127.0.0.1",
        "--port",
        "5001",
    ]
    with pytest.raises(SteerkitError, match="-P must be key=value, got 'coef'"):
        cli.console_command(["run", "steer_eval", "-P", "coef"], root, env)
    with pytest.raises(SteerkitError, match="no MLproject in"):
        cli.project_root(tmp_path)


def test_console_script_runs_mlflow(tmp_path, monkeypatch, capsys):
    """`steerkit ui --help` reaches the real `mlflow ui` (exit 0); a bad -P exits 2 with one line."""
    monkeypatch.chdir(ROOT)
    assert cli.main(["ui", "--help"]) == 0
    assert cli.main(["run", "steer_eval", "-P", "oops"]) == 2
    assert capsys.readouterr().err.strip() == "error: -P must be key=value, got 'oops'"


def test_builtin_scorers_on_known_completions():
    from steerkit.core.generation import Generation
    from steerkit.corpora.loader import PromptRow

    def gen(text: str, n: int = 3) -> Generation:
        return Generation("x", text, tuple(range(n)), n, "eos", 5)

    row = PromptRow("x", "def add(a, b):\n", {"tests": "assert add(1, 2) == 3\nassert add(0, 0) == 0"})
    good, wrong = gen("    return a + b\n"), gen("    return a - b\n")
    fenced = gen("Sure:\n```python\ndef add(a, b):\n    return b + a\n```\n")
    exits_early = gen("    return a + b\nimport sys; sys.exit(0)\n")
    score = resolve_scorer("python_tests").score
    assert score([good, wrong, fenced, exits_early], [row] * 4) == [True, False, True, False]
    assert resolve_scorer("regex:I can(no|')t").score([gen("I can't help"), gen("Sure")], [row] * 2) == [True, False]
    refusal = resolve_scorer("refusal").score([gen("I'm sorry, but I cannot help with that request.")], [row])
    assert refusal == [True]
    assert resolve_scorer("length").score([gen("abc", 7)], [row]) == [7.0]
