"""LLM mode: Instella's procedure (abstraction, program, perturbation, rewrite, solve) through datatrove's
inference pipeline, so any server datatrove drives works: `endpoint` (any OpenAI-compatible URL), `vllm`,
`sglang`. datatrove brings concurrency, retries with back-off, per-request caching and resume
(`DIR/work/cache`), and progress metrics; this module supplies the rollout and assembles the output.

Generated programs only ever run in the sandbox (sandbox.py: a whitelisted-AST interpreter inside an isolated
process; a run stops with SandboxUnavailable if that isolation cannot be set up). A program is kept when it
reproduces the original answer; a variant is kept when its program answer is a sane number, its rewritten
question is new (not a train question, no 13-gram shared with GSM8K test) and the model's worked solution re-checks
(every `<<expr=result>>` right, `####` = last result = program answer).
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

from pipelines.io import iter_jsonl

from .decontam import NgramIndex
from .io import ShardWriter, load_rows
from .parse import check_solution, final_answer, parse_number
from .prompts import (
    abstraction_messages,
    perturb_messages,
    program_messages,
    rewrite_messages,
    solve_messages,
)
from .report import Report, TokenCounter
from .sandbox import SandboxLimits, ensure_available, run_program


@dataclass(frozen=True)
class LLMConfig:
    server_type: str = "endpoint"
    model: str = "Qwen/Qwen2.5-72B-Instruct"
    endpoint_url: str | None = None
    api_key: str | None = None
    variants: int = 20  # Instella's target: 20 correct samples per problem
    seed: int = 0
    concurrency: int = 64
    program_tries: int = 5  # abstraction + program attempts per problem
    perturb_per_call: int = 5
    max_perturb_calls: int = 10
    temperature: float = 0.7
    max_tokens: int = 2048
    request_timeout: float | None = 300.0


def _json_block(text: str):
    """The first JSON object or list in a reply (models like to wrap it in prose or ``` fences)."""
    m = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    body = m.group(1) if m else text
    start = min((i for i in (body.find("{"), body.find("[")) if i != -1), default=-1)
    if start == -1:
        raise ValueError("no JSON in reply")
    return json.JSONDecoder().raw_decode(body[start:])[0]


def extract_program(text: str) -> str:
    m = re.search(r"```(?:python)?\s*(.*?)```", text, re.S)
    code = m.group(1) if m else text[text.find("def "):] if "def " in text else text
    return code.strip() + "\n"


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _matches(value: float, target: Fraction) -> bool:
    return abs(Fraction(value) - target) <= Fraction(1, 10**6) * max(1, abs(target))


class Rollout:
    """One problem through the five stages. Called by datatrove's InferenceRunner with its `generate` callback."""

    def __init__(self, config: LLMConfig, train_questions: frozenset[str], test_index: NgramIndex | None,
                 limits: SandboxLimits = SandboxLimits()):
        self.cfg, self.train_questions, self.test_index, self.limits = config, train_questions, test_index, limits

    async def _ask(self, generate, messages: list[dict], n: int) -> str:
        payload = {"messages": messages, "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens,
                   "seed": self.cfg.seed * 1_000_003 + n}
        return (await generate(payload)).text

    async def _run(self, program: str, params: dict):
        return await asyncio.to_thread(run_program, program, params, "answer", self.limits)

    async def __call__(self, document, generate) -> dict:
        question, answer = document.text, document.metadata["answer"]
        rejects: Counter = Counter()
        try:
            target = parse_number(final_answer(answer) or "")
        except ValueError:
            return {"rejected": "original answer is not a number", "variants": [], "rejects": {}}
        calls = 0
        found = None
        for _ in range(self.cfg.program_tries):
            calls += 1
            try:
                abstraction = _json_block(await self._ask(generate, abstraction_messages(question), calls))
                params = abstraction["parameters"]
                abstract_q = abstraction["abstract_question"]
                if not isinstance(params, dict) or not params or not all(_number(v) for v in params.values()):
                    raise ValueError("parameters are not numbers")
            except (ValueError, KeyError, TypeError):
                rejects["unparseable abstraction"] += 1
                continue
            calls += 1
            program = extract_program(await self._ask(generate, program_messages(abstract_q, params), calls))
            result = await self._run(program, params)
            if not result.ok:
                rejects[f"program {result.reason.split(':')[0]}"] += 1
                rejects["sandbox: " + result.reason[:80]] += 1
                continue
            if not _matches(result.value, target):
                rejects["program does not reproduce the answer"] += 1
                continue
            found = (abstract_q, params, program)
            break
        if found is None:
            reason = rejects.most_common(1)[0][0] if rejects else "no program"
            return {"rejected": reason, "variants": [], "rejects": dict(rejects)}
        abstract_q, params, program = found

        variants: list[dict] = []
        seen = {" ".join(question.split())}
        for _ in range(self.cfg.max_perturb_calls):
            if len(variants) >= self.cfg.variants:
                break
            calls += 1
            try:
                sets = _json_block(await self._ask(generate, perturb_messages(question, params,
                                                                              self.cfg.perturb_per_call), calls))
                if not isinstance(sets, list):
                    raise ValueError("not a list")
            except (ValueError, TypeError):
                rejects["unparseable perturbation"] += 1
                continue
            for new in sets:
                if len(variants) >= self.cfg.variants:
                    break
                if not isinstance(new, dict) or set(new) != set(params) or not all(_number(v) for v in new.values()):
                    rejects["perturbation with wrong parameters"] += 1
                    continue
                if any(isinstance(params[k], int) and not float(new[k]).is_integer() for k in params):
                    rejects["integer parameter made fractional"] += 1
                    continue
                result = await self._run(program, new)
                if not result.ok:
                    rejects["program failed on new values"] += 1
                    continue
                value = Fraction(result.value).limit_denominator(10**6)
                if (target.denominator == 1 and value.denominator != 1) or (target >= 0 > value):
                    rejects["new answer not of the original kind"] += 1
                    continue
                calls += 1
                new_q = (await self._ask(generate, rewrite_messages(question, params, new), calls)).strip()
                key = " ".join(new_q.split())
                if not new_q or key in seen or key in self.train_questions:
                    rejects["rewrite repeats a known question"] += 1
                    continue
                calls += 1
                solution = (await self._ask(generate, solve_messages(new_q), calls)).strip()
                check = check_solution(solution)
                if not check.ok:
                    rejects["solution fails the re-check"] += 1
                    continue
                if parse_number(final_answer(solution)) != value:
                    rejects["solution disagrees with the program"] += 1
                    continue
                if self.test_index is not None and self.test_index.overlaps(new_q + "\n" + solution):
                    rejects["13-gram overlap with GSM8K test"] += 1
                    continue
                seen.add(key)
                variants.append({"question": new_q, "solution": solution, "params": new})
        return {"rejected": None, "variants": variants, "rejects": dict(rejects), "program": program,
                "abstract_question": abstract_q, "params": params}


def run_llm(input_path: str | Path, out_dir: str | Path, config: LLMConfig, test_path: str | Path | None = None,
            tokenizer_path: str | Path | None = None, limit: int | None = None) -> dict:
    """Run the LLM procedure over a GSM8K train file; writes shards + report.json into `out_dir`."""
    from datatrove.data import Document
    from datatrove.pipeline.inference.run_inference import (
        InferenceConfig,
        InferenceRunner,
    )
    from datatrove.pipeline.writers import JsonlWriter

    start = time.perf_counter()
    out_dir = Path(out_dir)
    work = out_dir / "work"
    rows, skips = load_rows(input_path, limit)
    test_index = NgramIndex.from_gsm8k(test_path) if test_path else None
    rollout = Rollout(config, frozenset(" ".join(r.question.split()) for r in rows), test_index)
    ensure_available(rollout.limits)  # fail closed before any model call, not once per program
    inference = InferenceConfig(
        server_type=config.server_type, model_name_or_path=config.model, endpoint_url=config.endpoint_url,
        api_key=config.api_key, use_chat=True, max_concurrent_generations=config.concurrency,
        max_concurrent_documents=max(1, config.concurrency // 4), request_timeout=config.request_timeout,
        metric_interval=600,
    )
    runner = InferenceRunner(
        rollout_fn=rollout, config=inference,
        output_writer=JsonlWriter(str(work / "rollouts"), output_filename="${rank}_chunk_${chunk_index}.jsonl",
                                  compression=None),
        checkpoints_local_dir=str(work / "cache"), records_per_chunk=500, metadata_key="rollout",
    )
    docs = (Document(text=r.question, id=str(r.index), metadata={"answer": r.answer}) for r in rows)
    runner.run(docs, rank=0, world_size=1)

    # Assemble: rollout files -> records in train order.
    results: dict[int, dict] = {}
    for path in sorted((work / "rollouts").glob("*.jsonl")):
        for _, doc in iter_jsonl(path):
            outs = doc["metadata"].get("rollout") or [{"rejected": "no rollout result", "variants": []}]
            results[int(doc["id"])] = outs[0]
    report = Report("llm", str(input_path), asdict(config) | {"api_key": None}, rows=len(rows) + len(skips),
                    skipped_rows=[{"line": s.line, "reason": s.reason} for s in skips])
    writer, tokens = ShardWriter(out_dir), TokenCounter(tokenizer_path)
    for r in rows:
        res = results.get(r.index, {"rejected": "no result (request failed)", "variants": []})
        report.variant_rejections.update(res.get("rejects", {}))
        if res.get("rejected"):
            report.problem_rejections[res["rejected"]] += 1
            continue
        report.abstracted += 1
        records = [{
            "id": f"gsm8k-synth-{r.index}-{k}",
            "messages": [{"role": "user", "content": v["question"]}, {"role": "assistant", "content": v["solution"]}],
            "source_index": r.index, "params": v["params"], "original_params": res["params"], "mode": "llm",
        } for k, v in enumerate(res["variants"])]
        report.with_variants += bool(records)
        report.variants += len(records)
        writer.write(records)
        tokens.add(records)
    tokens.flush()
    shards = writer.close()
    report.tokens = tokens.total if tokens.tokenizer is not None else None
    report.seconds = time.perf_counter() - start
    report.extra = {"shards": [p.name for p in shards], "work": str(work),
                    "test_decontamination": str(test_path) if test_path else None}
    return report.write(out_dir / "report.json")
