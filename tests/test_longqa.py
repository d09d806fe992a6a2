"""Long-context QA synthesis against real loopback OpenAI-compatible HTTP servers (no mocks of datatrove).

The fake teachers speak /v1/models and /v1/chat/completions over real sockets; datatrove's EndpointServer talks to
them exactly as it would to vLLM. Each request is counted server-side, so retries, drops and the resume behaviour of
datatrove's checkpoints/request cache are observed from the outside.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipelines.read.formats import iter_records
from pipelines.synth.longqa import generate as longqa
from pipelines.synth.longqa.generate import InputSource, LongQAConfig, TeacherConfig

CONTEXT_RE = re.compile(r"<(?:excerpt|document)>\n(.*)\n</(?:excerpt|document)>", re.S)


def qa_for(context: str) -> tuple[str, str]:
    """The canned QA a good teacher gives for a context: derived from it, so tests can check which doc it came from."""
    h = hashlib.sha1(context.encode()).hexdigest()[:10]
    return f"What is the fingerprint of the passage starting {context[:20]!r}?", f"It is {h}."


class FakeTeacher:
    """A threaded HTTP server; `behaviour(context, n)` picks the reply to the n-th request (1-based) for a context."""

    def __init__(self, behaviour=None, delay: float = 0.0):
        self.behaviour = behaviour or (lambda context, n: "ok")
        self.delay = delay
        self.lock = threading.Lock()
        self.requests: list[dict] = []  # every chat request received
        self.inflight = 0
        self.max_inflight = 0
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _send(self, status: int, body: bytes):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): fine
                    pass

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, json.dumps({"object": "list", "data": [{"id": "teacher"}]}).encode())
                else:
                    self._send(404, b"{}")

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                context = CONTEXT_RE.search(payload["messages"][-1]["content"]).group(1)
                with teacher.lock:
                    teacher.requests.append({"context": context, "seed": payload.get("seed")})
                    n = sum(r["context"] == context for r in teacher.requests)
                    teacher.inflight += 1
                    teacher.max_inflight = max(teacher.max_inflight, teacher.inflight)
                try:
                    time.sleep(teacher.delay)
                    self._reply(teacher.behaviour(context, n), context)
                finally:
                    with teacher.lock:
                        teacher.inflight -= 1

            def _reply(self, action: str, context: str):
                if action == "timeout":
                    time.sleep(2.0)
                    return self._send(200, b"{}")
                if action == "500":
                    return self._send(500, b'{"error": "internal"}')
                if action == "malformed":
                    return self._send(200, b'{"choices": [{"message": {"content": "Question')
                if action == "no-choices":
                    return self._send(200, b'{"object": "chat.completion"}')
                q, a = qa_for(context)
                content = {"ok": f"Question: {q}\nAnswer: {a}", "chatty": "Sorry, I can't help with that."}[action]
                body = {"id": "x", "object": "chat.completion", "model": "teacher",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}
                return self._send(200, json.dumps(body).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def count(self, context_substring: str) -> int:
        return sum(context_substring in r["context"] for r in self.requests)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def teacher_cfg(url: str, **kw) -> TeacherConfig:
    kw = {"request_timeout": 0.5, "max_attempts": 3, "backoff_s": 0.01, "max_concurrency": 4, "ready_timeout_s": 2,
          **kw}
    return TeacherConfig(server_type="endpoint", endpoint_url=url, model="teacher", **kw)


def write_docs(path: Path, docs: dict[str, str]) -> InputSource:
    with open(path, "w") as f:
        for doc_id, text in docs.items():
            f.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    return InputSource(name="docs", path=str(path), display=str(path))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------------------------------ #
def test_parse_qa_accepts_the_format_and_rejects_everything_else():
    assert longqa.parse_qa("Question: Who?\nAnswer: Ahab.") == ("Who?", "Ahab.")
    assert longqa.parse_qa("**Question:** Who is it?\n**Answer:** Ishmael, the narrator.\n") == (
        "Who is it?", "Ishmael, the narrator.")
    assert longqa.parse_qa("Sure! Here you go.") is None
    assert longqa.parse_qa("Question: a?\nAnswer: b\nQuestion: c?\nAnswer: d") is None
    assert longqa.parse_qa("Question: \nAnswer: b") is None


def test_subparts_are_sentence_aligned_and_2k_to_8k_tokens(hub, tokenizer_path, tmp_path):
    """Real books from the mirror, full-size settings (8K minimum, 128K truncation, 2K-8K sub-parts)."""
    src = hub / "princeton-nlp/prolong-raw/books/books-0000.json.gz"
    cfg = LongQAConfig(kind="book", seed=3)
    drops: list[dict] = []
    docs = list(longqa.prepare_documents([InputSource("books", str(src), str(src))], cfg, str(tokenizer_path), drops))
    n_records = sum(1 for _ in iter_records(str(src)))
    assert len(docs) + len(drops) == n_records and len(docs) >= 2
    tok = longqa.load_tokenizer(str(tokenizer_path))
    for d in docs:
        sub = d.metadata["subpart"]
        assert d.metadata["n_tokens"] <= cfg.max_doc_tokens
        spans = longqa.sentence_spans(d.text)
        assert sub["char_start"] in {a for a, _ in spans}
        assert sub["char_end"] in {b for _, b in spans}
        excerpt = d.text[sub["char_start"]:sub["char_end"]]
        assert excerpt == d.metadata["context"]
        n = longqa.count_tokens(tok, excerpt)
        assert n == sub["n_tokens"] and 2048 <= n <= 8192
    # seeded: the same choice again, a different one with another seed
    again = list(longqa.prepare_documents([InputSource("books", str(src), str(src))], cfg, str(tokenizer_path), []))
    assert [d.metadata["subpart"] for d in again] == [d.metadata["subpart"] for d in docs]
    other = list(longqa.prepare_documents([InputSource("books", str(src), str(src))],
                                          LongQAConfig(kind="book", seed=4), str(tokenizer_path), []))
    assert [d.metadata["subpart"] for d in other] != [d.metadata["subpart"] for d in docs]


def test_books_get_their_own_qa_appended_after_the_whole_document(tmp_path, tokenizer_path):
    sentence = "The whale swam past the old ship while the crew watched in silence. "
    docs = {"long-a": sentence * 200, "long-b": ("Captain Ahab paced the deck at night. " * 300),
            "short-c": sentence * 5}
    src = write_docs(tmp_path / "books.jsonl", docs)
    cfg = LongQAConfig(kind="book", min_doc_tokens=1000, max_doc_tokens=2500, subpart_min_tokens=200,
                       subpart_max_tokens=400)
    with FakeTeacher() as srv:
        res = longqa.synthesize_long_qa([src], tmp_path / "out", "books", cfg, teacher_cfg(srv.url), str(tokenizer_path))
    samples = {s["qa_doc_id"]: s for s in read_jsonl(res.samples_path)}
    dropped = read_jsonl(res.dropped_path)
    assert set(samples) == {"long-a", "long-b"}
    assert [(d["doc_id"], d["reason"]) for d in dropped] == [("short-c", "too-short")]
    for doc_id, s in samples.items():
        user, answer = s["messages"][0]["content"], s["messages"][1]["content"]
        assert s["text"] == user + "\n" + answer + "\n" and s["text"][s["answer_start"]:] == answer + "\n"
        # the whole (truncated) document comes first, then the question about *its* sub-part
        assert user.startswith(docs[doc_id][:200].strip())
        excerpt = docs[doc_id][s["subpart"]["char_start"]:s["subpart"]["char_end"]]
        assert (s["question"], s["answer"]) == qa_for(excerpt)
        assert user.endswith("Question: " + s["question"])
        assert s["n_tokens"] <= 2500 + 200  # truncated document + question + answer
    assert len(srv.requests) == 2


def test_failures_are_retried_then_dropped_with_a_reason(tmp_path, tokenizer_path):
    plan = {
        "flaky-500": lambda n: "500" if n <= 2 else "ok",
        "slow-once": lambda n: "timeout" if n == 1 else "ok",
        "malformed-once": lambda n: "malformed" if n == 1 else "ok",
        "always-500": lambda n: "500",
        "always-slow": lambda n: "timeout",
        "always-malformed": lambda n: "malformed",
        "no-choices": lambda n: "no-choices",
        "chatty": lambda n: "chatty",
        "good-1": lambda n: "ok",
        "good-2": lambda n: "ok",
    }

    def behaviour(context: str, n: int) -> str:
        return plan[context.split(" ", 1)[0]](n)

    docs = {name: f"{name} is the subject of this short article. It has two sentences." for name in plan}
    src = write_docs(tmp_path / "short.jsonl", docs)
    cfg = LongQAConfig(kind="short", concat_min_tokens=1)  # one document per sample: easy to check each doc
    with FakeTeacher(behaviour) as srv:
        res = longqa.synthesize_long_qa([src], tmp_path / "out", "short", cfg, teacher_cfg(srv.url), str(tokenizer_path))
    kept = {s["qa_doc_id"] for s in read_jsonl(res.samples_path)}
    dropped = {d["doc_id"]: d for d in read_jsonl(res.dropped_path)}
    assert kept == {"flaky-500", "slow-once", "malformed-once", "good-1", "good-2"}
    assert {k: d["reason"] for k, d in dropped.items()} == {
        "always-500": "teacher-server-error", "always-slow": "teacher-timeout",
        "always-malformed": "teacher-bad-response", "no-choices": "teacher-bad-response",
        "chatty": "teacher-unparseable-qa"}
    assert all(d["detail"].count("attempt") == 3 for d in dropped.values())  # every attempt is explained
    assert kept | set(dropped) == set(docs)  # no silent gap
    # server-side counts: retried exactly as often as needed, never more
    expected = {"flaky-500": 3, "slow-once": 2, "malformed-once": 2, "good-1": 1, "good-2": 1}
    expected.update({k: 3 for k in dropped})
    assert {k: srv.count(k + " is") for k in docs} == expected
    # a retry is a different request (seed + attempt), so a cached failure is never replayed as the answer
    seeds = [r["seed"] for r in srv.requests if r["context"].startswith("flaky-500")]
    assert sorted(seeds) == [0, 1, 2]
    assert res.summary["dropped_by_reason"]["teacher-timeout"] == 1


def test_concurrency_limit_is_respected(tmp_path, tokenizer_path):
    docs = {f"d{i}": f"Document number {i} talks about topic {i}. That is all." for i in range(8)}
    src = write_docs(tmp_path / "short.jsonl", docs)
    with FakeTeacher(delay=0.15) as srv:
        longqa.synthesize_long_qa([src], tmp_path / "out", "short", LongQAConfig(kind="short", concat_min_tokens=1),
                                  teacher_cfg(srv.url, max_concurrency=2), str(tokenizer_path))
    assert len(srv.requests) == 8
    assert srv.max_inflight == 2


def test_short_documents_are_concatenated_to_the_target_with_one_qa(hub, tmp_path, tokenizer_path):
    """Through the CLI, on the mirror's arXiv folder (one file), target scaled down from 128K to 8K tokens."""
    from typer.testing import CliRunner

    import cli

    src_path = hub / "princeton-nlp/prolong-raw/arxiv/arxiv-0001.json.gz"
    out = tmp_path / "out"
    with FakeTeacher() as srv:
        r = CliRunner().invoke(cli.app, [
            "synth", "long-qa", "--kind", "short", "--name", "arxiv", "--out", str(out), "--source-root", str(hub),
            "--input", "hf://datasets/princeton-nlp/prolong-raw/arxiv/arxiv-0001.json.gz", "--endpoint-url", srv.url,
            "--model", "teacher", "--concat-min-tokens", "8192", "--seed", "1", "--max-concurrency", "16",
            "--request-timeout", "5", "--ready-timeout", "2"])
    assert r.exit_code == 0, r.output
    assert "samples" in r.output
    res = longqa.LongQAResult(out / "arxiv.jsonl", out / "arxiv.dropped.jsonl")
    samples, dropped = read_jsonl(res.samples_path), read_jsonl(res.dropped_path)
    texts = {r.doc_id: r.text for r in iter_records(str(src_path))}
    assert len(srv.requests) == len(texts)  # one QA per document
    assert len(samples) >= 3
    used = [i for s in samples for i in s["source_ids"]]
    assert len(used) == len(set(used))  # a document is in one sample only
    assert set(used) | {d["doc_id"] for d in dropped} == set(texts)  # everything accounted for
    assert {d["reason"] for d in dropped} <= {"incomplete-sample"}
    assert all(d["file"].startswith("hf://datasets/princeton-nlp/prolong-raw/arxiv/") for d in dropped)
    for s in samples:
        assert s["qa_doc_id"] in s["source_ids"]
        tok = longqa.load_tokenizer(str(tokenizer_path))
        assert sum(longqa.count_tokens(tok, texts[i]) + 1 for i in s["source_ids"]) >= 8192 // 2
        assert s["n_tokens"] >= 8192
        # the appended QA belongs to the chosen document and the question comes after all documents
        assert (s["question"], s["answer"]) == qa_for(texts[s["qa_doc_id"]].strip()) or \
            (s["question"], s["answer"]) == qa_for(texts[s["qa_doc_id"]])
        last_doc = texts[s["source_ids"][-1]].strip()
        assert s["messages"][0]["content"].index(last_doc[-50:]) < s["messages"][0]["content"].index("Question: ")


class Interrupted(RuntimeError):
    pass


def test_an_interrupted_run_resumes_without_resending_answered_requests(tmp_path, tokenizer_path):
    docs = {f"doc{i:02d}": f"doc{i:02d} reports on harvest number {i}. Farmers were pleased." for i in range(12)}
    src = write_docs(tmp_path / "short.jsonl", docs)
    cfg = LongQAConfig(kind="short", concat_min_tokens=1, records_per_chunk=3)
    out = tmp_path / "out"
    with FakeTeacher() as srv:
        teacher = teacher_cfg(srv.url, max_concurrency=1)

        def interrupted_input():  # the input dies after 7 documents, like a killed job
            drops: list[dict] = []
            for i, d in enumerate(longqa.prepare_documents([src], cfg, str(tokenizer_path), drops)):
                if i == 7:
                    raise Interrupted("killed")
                yield d

        with pytest.raises(Interrupted):
            longqa.synthesize_long_qa([src], out, "short", cfg, teacher, str(tokenizer_path), docs=interrupted_input())
        first_run = {k: srv.count(k) for k in docs}
        assert sum(first_run.values()) >= 6 and not (out / "short.summary.json").exists()

        res = longqa.synthesize_long_qa([src], out, "short", cfg, teacher, str(tokenizer_path))
        total = {k: srv.count(k) for k in docs}
    samples = read_jsonl(res.samples_path)
    assert sorted(s["qa_doc_id"] for s in samples) == sorted(docs)  # complete, no duplicates
    # documents finished before the interruption were not sent again; at most the one in flight was
    resent = [k for k in docs if total[k] > 1]
    assert len(resent) <= 1 and all(total[k] == 2 for k in resent)
    assert sum(total.values()) <= len(docs) + 1
    # a finished run is not redone: same summary, no new requests
    with FakeTeacher() as srv2:
        again = longqa.synthesize_long_qa([src], out, "short", cfg, teacher_cfg(srv2.url), str(tokenizer_path))
    assert len(srv2.requests) == 0 and again.summary == res.summary


def test_unreachable_teacher_is_a_clear_error_not_a_run_of_drops(tmp_path, tokenizer_path):
    src = write_docs(tmp_path / "short.jsonl", {"a": "One sentence here. Another one."})
    srv = FakeTeacher()  # bound but never serving, then closed: nothing listens on the port
    url = srv.url
    srv.server.server_close()
    from datatrove.pipeline.inference.types import ServerError

    cfg = teacher_cfg(url)
    t0 = time.monotonic()
    with pytest.raises(ServerError, match="Failed to start"):
        longqa.synthesize_long_qa([src], tmp_path / "out", "short", LongQAConfig(kind="short", concat_min_tokens=1),
                                  cfg, str(tokenizer_path))
    assert time.monotonic() - t0 < 15
    assert not (tmp_path / "out" / "short.summary.json").exists()
