"""`prepare`: resolve a spec's sources and tokenizer into a `BuildContext` (plain data every stage receives).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.build.inputs import stage_a_code_version
from pipelines.build.options import BuildOptions
from pipelines.build.spec import MixtureSpec, planned_share
from pipelines.dedup.copies import copies_enabled
from pipelines.dedup.late_tokens import check_tokenize_after
from pipelines.errors import SpecError
from pipelines.read.registry import task_options
from pipelines.read.rowfilters import task_fetch
from pipelines.read.sources import HF_PREFIX, resolve_source
from pipelines.shards.format import sha256_file
from pipelines.steps.tasks import FileTask


@dataclass
class BuildContext:
    """Everything a stage needs, as plain data (datatrove pickles the pipeline for its workers)."""

    spec: MixtureSpec
    opts: BuildOptions
    seed: int
    tokenizer_path: str
    eos_id: int
    pad_id: int
    vocab_size: int
    tasks: list[FileTask]
    sources: list[dict]
    work_dir: str
    with_mask: bool
    started_at: str
    decontam_index: str | None = None

    @property
    def out(self) -> Path:
        return Path(self.opts.out)


def display_uri(path: str, source_root: str | None) -> str:
    """Record files under their canonical hf:// URI when read through --source-root."""
    if source_root:
        root = str(Path(source_root).resolve())
        p = str(Path(path).resolve()) if "://" not in path else path
        if p.startswith(root + os.sep):
            return HF_PREFIX + p[len(root) + 1:]
    return path


def _special_id(tok, names: tuple[str, ...]) -> int | None:
    for n in names:
        i = tok.token_to_id(n)
        if i is not None:
            return i
    return None


def prepare(spec: MixtureSpec, opts: BuildOptions) -> BuildContext:
    """Resolve sources and tokenizer, and fix the stage-A work dir from a hash of everything stage A depends on.
    The options are checked by the caller (`build_mixture`, `dry_run`); the spec's sections are checked here."""
    spec.check_sections()
    tokenizer_path, tok = spec.load_tokenizer()
    eos_id = spec.eos_id if spec.eos_id is not None else _special_id(tok, ("<|endoftext|>", "</s>", "<eos>"))
    pad_id = spec.pad_id if spec.pad_id is not None else _special_id(tok, ("<|padding|>", "<pad>"))
    if eos_id is None:
        raise SpecError(f"{spec.path}: tokenizer has no <|endoftext|>; set eos_id in the spec")
    if pad_id is None:
        pad_id = eos_id
    spec.check_token_ids(eos_id, pad_id, tok.get_vocab_size())
    seed = spec.seed if opts.seed is None else opts.seed

    tasks: list[FileTask] = []
    sources: list[dict] = []
    read_by: dict[str, str] = {}  # opened path -> source: a file feeds one source only (ids, files.n_records)
    source_map = opts.source_mapping
    for s in spec.sources:
        resolved = resolve_source(source_map.apply(s.uri), opts.source_root)
        condition = "ok" if resolved.files else ("optional-missing" if s.optional else "no-files")
        if not resolved.files and planned_share(s) is not None:  # a planned share never silently vanishes
            raise SpecError(f"{spec.path}: source '{s.name}' carries a planned share ({planned_share(s):g}) but "
                            f"matches no files ({s.uri}); fetch it (or fix the uri), or drop the source and its share")
        sources.append({"source": s.name, "uri": s.uri, "resolved": resolved.resolved, "sample": s.sample,
                        "n_files": len(resolved.files), "condition": condition, "planned_share": s.share})
        for f, rel, ident in zip(resolved.files, resolved.relative, resolved.identities):
            if f in read_by:
                raise SpecError(f"{spec.path}: sources '{read_by[f]}' and '{s.name}' both match {f}; a file may feed "
                                "one source only (narrow one uri, or use `sample` to weight it)")
            read_by[f] = s.name
            tasks.append(FileTask(source=s.name, path=f,
                                  display=source_map.canonical(f) or display_uri(f, opts.source_root), fmt=s.format,
                                  text_key=s.text_key, id_key=s.id_key, sample=s.sample, relative=rel,
                                  identity=ident, fetch=task_fetch(s.fetch, source_map), filter=s.filter,
                                  options=task_options(spec, s, tokenizer_path)))

    with_mask = bool(spec.packing.get("loss_mask", False))
    check_tokenize_after(spec, tasks, with_mask)
    stage_a = {
        "tasks": [t.__dict__ for t in tasks], "tokenizer_sha256": sha256_file(tokenizer_path), "eos": eos_id,
        "seed": seed, "strict": opts.strict, "decontaminate": spec.decontaminate, "dedup": spec.dedup,
        # 3: EOS/pad strings tokenized as text, and uint16 intermediates when the vocabulary fits
        "with_mask": with_mask, "pad": pad_id, "format_version": 3,
        "code": stage_a_code_version(),
        **({"tokenization": spec.tokenization} if spec.tokenization != "default" else {}),
        # exact copies decided before stage A are not tokenized (pipelines.dedup.copies)
        **({"exact_copies": True} if copies_enabled(spec.dedup, tuple(opts.exclude), with_mask, tasks) else {}),
    }  # tasks carry each file's identity (size/mtime/ETag): an input changed in place gets a fresh work dir
    stage_a_hash = hashlib.sha256(json.dumps(stage_a, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return BuildContext(
        spec=spec, opts=opts, seed=seed, tokenizer_path=tokenizer_path, eos_id=eos_id, pad_id=pad_id,
        vocab_size=tok.get_vocab_size(), tasks=tasks, sources=sources,
        work_dir=str(Path(opts.out) / "work" / stage_a_hash), with_mask=with_mask,
        started_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
