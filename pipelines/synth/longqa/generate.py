"""Long-context QA synthesis (Instella-Long / ProLong style), with a teacher reached through datatrove inference.

Two kinds of input (`kind`):

- `book`: documents of at least `min_doc_tokens` (8K) tokens, truncated to `max_doc_tokens` (128K) on a sentence
  boundary. A random sub-part of `subpart_min_tokens`..`subpart_max_tokens` (2K-8K) tokens, cut on NLTK punkt_tab
  sentence boundaries, is shown to the teacher, which writes one question and answer; the QA is appended after the
  *whole* document.
- `short`: short documents (arXiv, DCLM). The teacher writes one QA per document; the documents are then shuffled
  and concatenated until the sample holds at least `concat_min_tokens` (128K) tokens, and the QA of one randomly
  chosen document of the sample is appended.

The teacher is any OpenAI-compatible chat server, driven by datatrove's `InferenceRunner` (server type `endpoint`
for a running server, `vllm` to spawn one on GPUs), which supplies the concurrency limit, the per-request cache and
the chunked checkpoints that make an interrupted run resume without re-sending answered requests. The rollout
below adds what datatrove leaves to the caller: a per-request timeout, retries of 500s / malformed responses /
unparseable answers with back-off, and turning a final failure into a *dropped document with a reason*.

Output (`OUT/<name>.jsonl`, one sample per line; read by a spec as `format: messages`):

    {"id", "kind": "book" | "short-concat",
     "messages": [{"role": "user", "content": DOCUMENT(S) + QUESTION}, {"role": "assistant", "content": ANSWER}],
     "text": user + "\\n" + answer + "\\n",        # == the builder's rendering of `messages`
     "answer_start": int,                          # char offset of the answer in `text`; SFT trains on text[answer_start:]
     "question", "answer", "qa_doc_id", "source_ids": [...], "n_tokens",
     "subpart": {"char_start", "char_end", "n_tokens"} | null}   # book: where the teacher's excerpt lies in the document

Every input record is accounted for: it is part of a sample in `OUT/<name>.jsonl` or a row of
`OUT/<name>.dropped.jsonl` (`doc_id, source, file, line, reason, detail`). `OUT/<name>.summary.json` has the counts.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
import re
import shutil
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from datatrove.data import Document

from pipelines import _logging  # noqa: F401  (datatrove's console at WARNING)
from pipelines.io import iter_jsonl
from pipelines.read.formats import iter_records

PROMPTS_PATH = Path(__file__).with_name("prompts.yaml")
KINDS = ("book", "short")


# --------------------------------------------------------------------------------------------------------------- #
# Configuration
# --------------------------------------------------------------------------------------------------------------- #
@dataclass
class TeacherConfig:
    """How to reach the teacher model and how hard to try."""

    server_type: str = "endpoint"  # endpoint (a running OpenAI-compatible server) | vllm (spawned by datatrove)
    endpoint_url: str | None = None  # base URL without /v1, e.g. http://127.0.0.1:8000
    model: str = "Qwen/Qwen2.5-14B-Instruct-1M"
    api_key: str | None = None
    max_concurrency: int = 32  # requests in flight (datatrove's max_concurrent_generations)
    request_timeout: float = 600.0  # seconds per request attempt
    max_attempts: int = 4  # per document; each failure waits backoff_s * 2**attempt
    backoff_s: float = 2.0
    temperature: float = 0.7
    max_new_tokens: int = 512
    seed: int = 0  # sent as the request seed (+ attempt, so a retry is a different request)
    tp: int = 1  # vllm only
    model_max_context: int = 1_010_000  # vllm only (Qwen2.5-14B-Instruct-1M)
    ready_timeout_s: float = 60.0  # how long to wait for the server to answer /v1/models (vllm: raise it, ~30 min)

    def __post_init__(self) -> None:
        if self.server_type not in ("endpoint", "vllm"):
            raise ValueError(f"server_type must be endpoint or vllm, got {self.server_type!r}")
        if self.server_type == "endpoint" and not self.endpoint_url:
            raise ValueError("server_type endpoint needs endpoint_url (e.g. http://127.0.0.1:8000)")
        if self.max_attempts < 1 or self.max_concurrency < 1:
            raise ValueError("max_attempts and max_concurrency must be >= 1")


@dataclass
class LongQAConfig:
    kind: str  # book | short
    seed: int = 0
    min_doc_tokens: int = 8192  # book: shorter documents are dropped (too-short)
    max_doc_tokens: int = 131072  # book: longer documents are truncated on a sentence boundary
    subpart_min_tokens: int = 2048
    subpart_max_tokens: int = 8192
    short_context_tokens: int = 8192  # short: at most this much of a document is shown to the teacher
    concat_min_tokens: int = 131072  # short: a sample concatenates documents until it has at least this many tokens
    records_per_chunk: int = 500  # datatrove checkpoint granularity (documents)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not 0 < self.subpart_min_tokens <= self.subpart_max_tokens:
            raise ValueError("need 0 < subpart_min_tokens <= subpart_max_tokens")
        if self.kind == "book" and self.min_doc_tokens < self.subpart_min_tokens:
            raise ValueError("min_doc_tokens must be >= subpart_min_tokens")


@dataclass(frozen=True)
class InputSource:
    name: str
    path: str  # fsspec-openable file
    display: str  # what drop records name (hf:// URI when read from the mirror)
    fmt: str = "text"
    text_key: str = "text"
    id_key: str = "id"


@lru_cache(maxsize=1)
def load_prompts(path: str = str(PROMPTS_PATH)) -> dict:
    with open(path, encoding="utf-8") as f:
        prompts = yaml.safe_load(f)
    for key in ("system", "book", "short"):
        if key not in prompts.get("teacher", {}):
            raise ValueError(f"{path}: missing teacher.{key}")
    for key in ("question", "answer", "document_separator"):
        if key not in prompts.get("training", {}):
            raise ValueError(f"{path}: missing training.{key}")
    return prompts


# --------------------------------------------------------------------------------------------------------------- #
# Tokenizer and sentence splitter
# --------------------------------------------------------------------------------------------------------------- #
def resolve_tokenizer(name_or_path: str) -> str:
    """A tokenizer.json path, or a name looked up as `<owner>_<name>.json` in ../shared/data/tokenizers."""
    from pipelines.resources import find_tokenizer, tokenizer_not_found

    found = find_tokenizer(name_or_path)
    if found is None:
        raise FileNotFoundError(tokenizer_not_found(name_or_path))
    return str(found)


@lru_cache(maxsize=4)
def load_tokenizer(path: str):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    tok.no_truncation()
    tok.no_padding()
    return tok


def count_tokens(tok, text: str) -> int:
    return len(tok.encode(text, add_special_tokens=False).ids)


@lru_cache(maxsize=1)
def sentence_splitter():
    """NLTK punkt_tab (English); NLTK_DATA defaults to ../shared/data/nltk_data beside the checkout."""
    from pipelines.resources import nltk_data_dir

    default = nltk_data_dir()
    os.environ.setdefault("NLTK_DATA", str(default))
    import nltk
    from nltk.tokenize.punkt import PunktTokenizer

    for p in (os.environ["NLTK_DATA"], str(default)):
        if p not in nltk.data.path:
            nltk.data.path.insert(0, p)
    try:
        return PunktTokenizer("english")
    except LookupError as e:
        raise LookupError(f"NLTK punkt_tab not found; set NLTK_DATA (tried {nltk.data.path[:2]})") from e


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of `text` (start of first char, end after last char)."""
    return list(sentence_splitter().span_tokenize(text))


# --------------------------------------------------------------------------------------------------------------- #
# Sub-part selection
# --------------------------------------------------------------------------------------------------------------- #
@dataclass(frozen=True)
class Subpart:
    char_start: int
    char_end: int
    n_tokens: int  # of text[char_start:char_end] tokenized on its own


def doc_rng(seed: int, doc_id: str) -> random.Random:
    h = hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(h, "little"))


def choose_subpart(text: str, spans: list[tuple[int, int]], token_starts: list[int], tok, rng: random.Random,
                   lo: int, hi: int, max_tries: int = 64) -> Subpart | None:
    """A random run of whole sentences with lo..hi tokens: random target length, random first sentence.

    Token positions come from the document's own encoding (`token_starts` = char offset where each token starts);
    the chosen text is re-tokenized on its own and only accepted if that count is within lo..hi too.
    """
    if not spans:
        return None
    s_tok = [bisect_left(token_starts, a) for a, _ in spans]  # tokens before each sentence start
    e_tok = [bisect_left(token_starts, b) for _, b in spans]  # tokens before each sentence end
    order = list(range(len(spans)))
    rng.shuffle(order)
    tries = 0
    for target in (rng.randint(lo, hi), hi):
        for i in order:
            j = bisect_right(e_tok, s_tok[i] + target) - 1
            if j < i or e_tok[j] - s_tok[i] < lo:
                continue
            tries += 1
            a, b = spans[i][0], spans[j][1]
            n = count_tokens(tok, text[a:b])
            if lo <= n <= hi:
                return Subpart(a, b, n)
            if tries >= max_tries:
                return None
    return None


def truncate_on_sentence(text: str, token_starts: list[int], max_tokens: int) -> str:
    """At most max_tokens tokens of `text`, ending at a sentence end (the possibly cut last sentence is dropped)."""
    if len(token_starts) <= max_tokens:
        return text
    cut = token_starts[max_tokens]
    spans = sentence_spans(text[:cut])
    if len(spans) < 2:
        return text[:cut]
    return text[:spans[-2][1]]


# --------------------------------------------------------------------------------------------------------------- #
# Step 1: read inputs and prepare one Document per teacher call
# --------------------------------------------------------------------------------------------------------------- #
def _drop(doc_id: str | None, src: InputSource, line: int, reason: str, detail: str = "") -> dict:
    return {"doc_id": doc_id, "source": src.name, "file": src.display, "line": line, "reason": reason,
            "detail": detail}


def prepare_documents(inputs: Iterable[InputSource], cfg: LongQAConfig, tokenizer_path: str,
                      drops: list[dict]) -> Iterator[Document]:
    """Yield the Documents to send to the teacher; append every record that cannot be used to `drops`."""
    tok = load_tokenizer(tokenizer_path)
    seen: set[str] = set()
    order = 0
    for src in inputs:
        base = Path(src.path).name
        for rec in iter_records(src.path, src.fmt, src.text_key, src.id_key):
            doc_id = rec.doc_id if rec.doc_id is not None else f"{src.name}/{base}:{rec.line}"
            if doc_id in seen:  # same rule as the builder: repeated ids get their file and line
                doc_id = f"{doc_id}@{base}:{rec.line}"
            seen.add(doc_id)
            if rec.reason:
                drops.append(_drop(doc_id, src, rec.line, rec.reason, rec.detail))
                continue
            text = rec.text
            enc = tok.encode(text, add_special_tokens=False)
            starts = [o[0] for o in enc.offsets]
            meta: dict[str, Any] = {"kind": cfg.kind, "source": src.name, "file": src.display, "line": rec.line,
                                    "order": order}
            if cfg.kind == "book":
                if len(starts) < cfg.min_doc_tokens:
                    drops.append(_drop(doc_id, src, rec.line, "too-short",
                                       f"{len(starts)} tokens < min_doc_tokens {cfg.min_doc_tokens}"))
                    continue
                if len(starts) > cfg.max_doc_tokens:
                    text = truncate_on_sentence(text, starts, cfg.max_doc_tokens)
                    meta["truncated_from_tokens"] = len(starts)
                    starts = starts[:bisect_left(starts, len(text))]
                sub = choose_subpart(text, sentence_spans(text), starts, tok, doc_rng(cfg.seed, doc_id),
                                     cfg.subpart_min_tokens, cfg.subpart_max_tokens)
                if sub is None:
                    drops.append(_drop(doc_id, src, rec.line, "no-subpart",
                                       f"no run of whole sentences with {cfg.subpart_min_tokens}-"
                                       f"{cfg.subpart_max_tokens} tokens"))
                    continue
                meta["subpart"] = asdict(sub)
                meta["context"] = text[sub.char_start:sub.char_end]
            else:
                context = truncate_on_sentence(text, starts, cfg.short_context_tokens)
                meta["context"] = context
            meta["n_tokens"] = len(starts)
            order += 1
            yield Document(text=text, id=doc_id, metadata=meta)


# --------------------------------------------------------------------------------------------------------------- #
# Step 2: the teacher (datatrove InferenceRunner + our rollout)
# --------------------------------------------------------------------------------------------------------------- #
_MARK = r"[*_#\s]*"  # markdown emphasis / headings around the labels
_QA_RE = re.compile(rf"^{_MARK}question{_MARK}:{_MARK}(?P<q>.+?)\s*\n{_MARK}answer{_MARK}:{_MARK}(?P<a>.+?)\s*$", re.I | re.S)


def parse_qa(text: str) -> tuple[str, str] | None:
    """`Question: ...` / `Answer: ...` (markdown emphasis tolerated) -> (question, answer), else None."""
    m = _QA_RE.match(text.strip())
    if not m:
        return None
    q, a = m.group("q").strip(), m.group("a").strip()
    if not q or not a or re.search(rf"\n{_MARK}question{_MARK}:", a, re.I):  # more than one QA is not one QA
        return None
    return q, a


def teacher_messages(kind: str, context: str, prompts: dict) -> list[dict]:
    t = prompts["teacher"]
    return [{"role": "system", "content": t["system"].strip()},
            {"role": "user", "content": t[kind].format(context=context)}]


def _is_http_500(err: BaseException) -> bool:
    # datatrove raises ServerError both for a 500 reply (retryable for an external endpoint) and for a server that
    # never came up (fatal); only the message tells them apart
    return "InternalServerError" in str(err)


REQUEST_TIMEOUT = "request-timeout"


class _TimedRequests:
    """Bound one HTTP exchange by config.request_timeout (datatrove's local-HTTP path has no timeout at all).

    Only the exchange is timed, not the wait for the server to come up (vLLM may take minutes). A timeout becomes an
    InferenceError, which datatrove hands straight to our rollout instead of its own 5 s-and-doubling sleeps.
    """

    async def _make_request(self, payload: dict) -> dict:
        from datatrove.pipeline.inference.types import InferenceError

        timeout = self.config.request_timeout
        try:
            return await asyncio.wait_for(super()._make_request(payload), timeout=timeout)
        except asyncio.TimeoutError:
            raise InferenceError(None, f"{REQUEST_TIMEOUT}: no reply within {timeout:g}s") from None


def _runner_class():
    from datatrove.pipeline.inference.run_inference import InferenceRunner
    from datatrove.pipeline.inference.servers import EndpointServer, VLLMServer

    class TimedEndpointServer(_TimedRequests, EndpointServer):
        pass

    class TimedVLLMServer(_TimedRequests, VLLMServer):
        pass

    class QARunner(InferenceRunner):
        def _init_server(self, rank: int):
            cls = {"endpoint": TimedEndpointServer, "vllm": TimedVLLMServer}[self.config.server_type]
            return cls(self.config, rank)

    return QARunner


async def qa_rollout(document: Document, generate, *, prompts: dict, teacher: TeacherConfig) -> dict:
    """One QA for one document. Never raises for a bad reply: returns {"status": "dropped", "reason", ...}."""
    from datatrove.pipeline.inference.types import InferenceError, ServerError

    meta = document.metadata
    messages = teacher_messages(meta["kind"], meta["context"], prompts)
    errors: list[str] = []
    reason = "bad-response"
    for attempt in range(teacher.max_attempts):
        if attempt:
            await asyncio.sleep(teacher.backoff_s * 2 ** (attempt - 1))
        payload = {"messages": messages, "max_tokens": teacher.max_new_tokens, "temperature": teacher.temperature,
                   "seed": teacher.seed + attempt}
        try:
            result = await generate(payload)
        except ServerError as e:
            if not _is_http_500(e):
                raise  # the server never came up or died for good: stop the run with datatrove's error
            reason, detail = "server-error", str(e)
        except InferenceError as e:  # timeout, non-200 status, malformed JSON, missing fields
            detail = str(e.error)
            reason = "timeout" if detail.startswith(REQUEST_TIMEOUT) else "bad-response"
        else:
            qa = parse_qa(result.text)
            if qa is not None:
                return {"status": "ok", "question": qa[0], "answer": qa[1], "attempts": attempt + 1,
                        "finish_reason": result.finish_reason}
            reason, detail = "unparseable-qa", f"reply {result.text[:120]!r}"
        errors.append(f"attempt {attempt + 1}: {reason}: {detail[:200]}")
    return {"status": "dropped", "reason": reason, "detail": " | ".join(errors), "attempts": teacher.max_attempts}


def _inference_config(teacher: TeacherConfig):
    from datatrove.pipeline.inference.run_inference import InferenceConfig

    delay = min(5.0, teacher.ready_timeout_s / 4)  # readiness polls of /v1/models
    return InferenceConfig(
        server_type=teacher.server_type, model_name_or_path=teacher.model, endpoint_url=teacher.endpoint_url,
        api_key=teacher.api_key, use_chat=True, max_concurrent_generations=teacher.max_concurrency,
        request_timeout=teacher.request_timeout, tp=teacher.tp, model_max_context=teacher.model_max_context,
        metric_interval=600, server_ready_delay_sec=delay,
        server_ready_max_attempts=max(1, math.ceil(teacher.ready_timeout_s / delay)),
        # an external endpoint is polled for ~10 s by datatrove; restarting it is not ours to do
        server_start_max_retries=0 if teacher.server_type == "endpoint" else 1,
    )


def run_teacher(docs: Iterable[Document], work_dir: Path, teacher: TeacherConfig, records_per_chunk: int = 500) -> Path:
    """Send every document through datatrove's InferenceRunner; returns the folder of raw results (JSONL).

    `work_dir/checkpoints` holds datatrove's request cache and chunk checkpoints: re-running after an interruption
    skips finished documents and replays answered requests instead of sending them again.
    """
    from datatrove.pipeline.writers import JsonlWriter

    raw = work_dir / "raw"
    runner = _runner_class()(
        rollout_fn=qa_rollout,
        config=_inference_config(teacher),
        output_writer=JsonlWriter(str(raw), output_filename="${rank}_chunk_${chunk_index}.jsonl", compression=None),
        shared_context={"prompts": load_prompts(), "teacher": teacher},
        checkpoints_local_dir=str(work_dir / "checkpoints"),
        records_per_chunk=records_per_chunk,
        metadata_key="qa",
    )
    runner.run(docs, rank=0, world_size=1)
    return raw


def read_raw(raw: Path) -> list[Document]:
    """The teacher's results, in input order."""
    out = []
    for path in sorted(raw.glob("*.jsonl")):
        for _, d in iter_jsonl(path):
            out.append(Document(text=d["text"], id=d["id"], metadata=d["metadata"]))
    out.sort(key=lambda d: d.metadata["order"])
    return out


# --------------------------------------------------------------------------------------------------------------- #
# Step 3: assemble the training samples
# --------------------------------------------------------------------------------------------------------------- #
def make_sample(sample_id: str, kind: str, documents: list[str], question: str, answer: str, prompts: dict) -> dict:
    tr = prompts["training"]
    user = (tr["document_separator"].join(d.strip() for d in documents) + tr["question"].format(question=question)).strip()
    completion = tr["answer"].format(answer=answer).strip()
    text = user + "\n" + completion + "\n"  # the builder renders messages as content.strip() + "\n" per turn
    return {"id": sample_id, "kind": kind,
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": completion}],
            "text": text, "answer_start": len(user) + 1, "question": question, "answer": answer}


def _result(doc: Document) -> dict:
    results = doc.metadata.get("qa") or []
    return results[0] if results else {"status": "dropped", "reason": "no-result", "detail": "rollout returned nothing"}


def assemble(results: list[Document], cfg: LongQAConfig, tokenizer_path: str, drops: list[dict],
             prompts: dict | None = None) -> list[dict]:
    prompts = prompts or load_prompts()
    tok = load_tokenizer(tokenizer_path)
    ok: list[tuple[Document, dict]] = []
    for doc in results:
        r = _result(doc)
        m = doc.metadata
        if r["status"] != "ok":
            drops.append({"doc_id": doc.id, "source": m["source"], "file": m["file"], "line": m["line"],
                          "reason": f"teacher-{r['reason']}", "detail": r.get("detail", "")})
        else:
            ok.append((doc, r))
    samples: list[dict] = []
    if cfg.kind == "book":
        for doc, r in ok:
            s = make_sample(f"longqa-book-{doc.id}", "book", [doc.text], r["question"], r["answer"], prompts)
            s.update(qa_doc_id=doc.id, source_ids=[doc.id], subpart=doc.metadata["subpart"])
            samples.append(s)
    else:
        rng = random.Random(cfg.seed)
        rng.shuffle(ok)
        group: list[tuple[Document, dict]] = []
        total = 0
        for item in ok:
            group.append(item)
            total += item[0].metadata["n_tokens"]
            if total >= cfg.concat_min_tokens:
                qa_doc, r = rng.choice(group)
                s = make_sample(f"longqa-concat-{len(samples):06d}-{qa_doc.id}", "short-concat",
                                [d.text for d, _ in group], r["question"], r["answer"], prompts)
                s.update(qa_doc_id=qa_doc.id, source_ids=[d.id for d, _ in group], subpart=None)
                samples.append(s)
                group, total = [], 0
        for doc, _ in group:  # the last, incomplete sample
            m = doc.metadata
            drops.append({"doc_id": doc.id, "source": m["source"], "file": m["file"], "line": m["line"],
                          "reason": "incomplete-sample",
                          "detail": f"the remaining documents hold {total} < concat_min_tokens {cfg.concat_min_tokens} tokens"})
    for s in samples:
        s["n_tokens"] = count_tokens(tok, s["text"])
    return samples


# --------------------------------------------------------------------------------------------------------------- #
# Whole run
# --------------------------------------------------------------------------------------------------------------- #
@dataclass
class LongQAResult:
    samples_path: Path
    dropped_path: Path
    summary: dict = field(default_factory=dict)


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def synthesize_long_qa(inputs: list[InputSource], out: Path, name: str, cfg: LongQAConfig, teacher: TeacherConfig,
                       tokenizer_path: str, force: bool = False, docs: Iterable[Document] | None = None) -> LongQAResult:
    """Prepare -> teacher -> assemble. `docs` overrides step 1 (tests use it to simulate an interrupted input)."""
    out.mkdir(parents=True, exist_ok=True)
    samples_path, dropped_path, summary_path = out / f"{name}.jsonl", out / f"{name}.dropped.jsonl", out / f"{name}.summary.json"
    work = out / "work" / name
    settings = {"inputs": [asdict(i) for i in inputs], "cfg": asdict(cfg), "tokenizer": tokenizer_path,
                "prompts": PROMPTS_PATH.read_text(encoding="utf-8"), "model": teacher.model,
                "teacher_seed": teacher.seed, "max_attempts": teacher.max_attempts}
    if force:
        shutil.rmtree(work, ignore_errors=True)
        summary_path.unlink(missing_ok=True)
    if summary_path.exists():
        return LongQAResult(samples_path, dropped_path, json.loads(summary_path.read_text()))
    work.mkdir(parents=True, exist_ok=True)
    settings_path = work / "settings.json"
    if settings_path.exists() and json.loads(settings_path.read_text()) != json.loads(json.dumps(settings)):
        raise ValueError(f"{work} holds an interrupted run made with other settings; re-run with --force to discard it")
    settings_path.write_text(json.dumps(settings, indent=1))

    drops: list[dict] = []
    documents = docs if docs is not None else prepare_documents(inputs, cfg, tokenizer_path, drops)
    raw = run_teacher(documents, work, teacher, cfg.records_per_chunk)
    results = read_raw(raw)
    samples = assemble(results, cfg, tokenizer_path, drops)
    _write_jsonl(samples_path, samples)
    _write_jsonl(dropped_path, drops)
    attempts = Counter(_result(d).get("attempts", 0) for d in results)
    summary = {
        "name": name, "kind": cfg.kind, "teacher": teacher.model, "documents_sent": len(results),
        "samples": len(samples), "sample_tokens": sum(s["n_tokens"] for s in samples),
        "documents_in_samples": sum(len(s["source_ids"]) for s in samples), "dropped": len(drops),
        "dropped_by_reason": dict(Counter(d["reason"] for d in drops)),
        "attempts_histogram": {str(k): v for k, v in sorted(attempts.items())},
    }
    summary_path.write_text(json.dumps(summary, indent=1))
    return LongQAResult(samples_path, dropped_path, summary)
