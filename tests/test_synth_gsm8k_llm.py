"""LLM mode: the whole procedure against a loopback fake endpoint (the sandbox has its own suites:
tests/test_sandbox_hostile.py, test_sandbox_process.py, test_sandbox_interpreter.py)."""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipelines.synth.gsm8k.parse import check_solution
from pipelines.synth.gsm8k.prompts import STAGE_MARKERS

# --- fake OpenAI-compatible endpoint -----------------------------------------------------------------------------
NATALIA = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
           "clips did Natalia sell altogether in April and May?")


def _fake_reply(messages: list[dict], state: dict) -> str:
    system, user = messages[0]["content"], messages[-1]["content"]
    if system.startswith(STAGE_MARKERS["abstraction"]):
        key = "natalia" if "Natalia" in user else "weng" if "Weng" in user else "betty"
        params = {"natalia": {"april": 48}, "weng": {"rate": 12, "minutes": 50}, "betty": {"cost": 100}}[key]
        return json.dumps({"abstract_question": f"[{key}] {user}", "parameters": params})
    if system.startswith(STAGE_MARKERS["program"]):
        if "[natalia]" in user:
            return "```python\ndef answer(april: int) -> float:\n    return april + april / 2\n```"
        if "[weng]" in user:  # hostile programs: the sandbox must refuse them and the run go on
            state["weng"] = state.get("weng", 0) + 1
            return ("```python\nimport os\ndef answer(rate, minutes):\n    return os.getpid()\n```"
                    if state["weng"] == 1 else
                    "```python\ndef answer(rate, minutes):\n    return len(open('/etc/hostname').read())\n```")
        return "```python\ndef answer(cost):\n    return cost * 3\n```"  # wrong: does not reproduce 5
    if STAGE_MARKERS["perturb"] in user:
        return json.dumps([{"april": 30}, {"april": 50}, {"april": 31}, {"april": 48.5}, {"april": 64}])
    if user.startswith(STAGE_MARKERS["rewrite"]):
        new = json.loads(user.split("New values:\n", 1)[1])
        return NATALIA.replace("48", str(new["april"]))
    if system.startswith(STAGE_MARKERS["solve"]):
        n = int(re.search(r"to (\d+) of her friends", user).group(1))
        if n == 50:  # a wrong worked solution: must be rejected by the re-check
            return f"Natalia sold {n}/2 = <<{n}/2=20>>20 clips in May.\n#### 70"
        return (f"Natalia sold {n}/2 = <<{n}/2={n // 2}>>{n // 2} clips in May.\n"
                f"Natalia sold {n}+{n // 2} = <<{n}+{n // 2}={n + n // 2}>>{n + n // 2} clips altogether.\n"
                f"#### {n + n // 2}")
    raise AssertionError(f"unexpected prompt: {system[:60]}")


@pytest.fixture
def fake_endpoint():
    state: dict = {"requests": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send({"data": [{"id": "fake"}]})

        def do_POST(self):
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["requests"] += 1
            text = _fake_reply(payload["messages"], state)
            self._send({"choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 10}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()


def test_llm_mode_against_fake_endpoint(fake_endpoint, tmp_path: Path, shared: Path, tokenizer_path):
    from pipelines.synth.gsm8k.llm import LLMConfig, run_llm

    url, state = fake_endpoint
    rows = [json.loads(line) for line in (shared / "gsm8k" / "train.jsonl").read_text().splitlines()[:3]]
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))  # Natalia, Weng, Betty
    cfg = LLMConfig(endpoint_url=url, model="fake", variants=5, program_tries=2, max_perturb_calls=1,
                    concurrency=4)
    report = run_llm(src, tmp_path / "out", cfg, shared / "gsm8k" / "test.jsonl", tokenizer_path)

    records = [json.loads(line) for p in sorted((tmp_path / "out").glob("*.jsonl")) for line in p.read_text().splitlines()]
    assert [r["params"]["april"] for r in records] == [30, 64]  # 50: wrong solution; 31: odd; 48.5: not an int
    for r in records:
        assert r["source_index"] == 0 and check_solution(r["messages"][1]["content"]).ok
        assert r["messages"][0]["content"] != rows[0]["question"]
    assert report["problems_abstracted"] == 1 and report["variants_emitted"] == 2
    assert report["problems_rejected"] == {"program rejected": 1, "program does not reproduce the answer": 1}
    rejected = report["variants_rejected"]
    assert rejected["solution fails the re-check"] == 1 and rejected["integer parameter made fractional"] == 1
    assert rejected["new answer not of the original kind"] == 1
    assert any("import of 'os'" in k for k in rejected) and any("'open'" in k for k in rejected)
    assert report["tokens"] > 0 and state["requests"] > 0
