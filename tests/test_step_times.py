"""Every step's own time goes to its datatrove stats (`pipelines.stages.TimedStep`): the build-throughput bench and
a user reading `logs/<stage>/stats.json` see where a stage's time went, step by step."""
from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep

from pipelines import stages


class FakeClock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


CLOCK = FakeClock()


class Source(PipelineStep):
    name, type = "source", "READER"

    def run(self, data=None, rank=0, world_size=1):
        CLOCK.now += 1.0  # start-up work inside `run` itself counts too
        for i in range(4):
            CLOCK.now += 5.0
            yield Document(text=str(i), id=str(i))


class Batched(PipelineStep):
    """Pulls two documents, works, yields them: its time must not include the source's 5 s per document."""

    name, type = "batched", "FILTER"

    def run(self, data, rank=0, world_size=1):
        batch = []
        for doc in data:
            batch.append(doc)
            if len(batch) == 2:
                CLOCK.now += 0.5
                yield from batch
                batch = []


class Sink(PipelineStep):
    name, type = "sink", "WRITER"

    def run(self, data, rank=0, world_size=1):
        for doc in data:
            CLOCK.now += 0.25
            yield doc


def test_each_step_gets_its_own_time_only(monkeypatch):
    monkeypatch.setattr(stages.time, "perf_counter", CLOCK)
    pipeline = stages.timed([Source(), Batched(), Sink(), len])  # a plain callable is left as it is
    assert pipeline[-1] is len and all(isinstance(s, stages.TimedStep) for s in pipeline[:-1])
    data = None
    for step in pipeline[:-1]:
        data = step(data, 0, 1)
    assert len(list(data)) == 4
    totals = {s.name: s.stats.time_stats.total for s in pipeline[:-1]}
    assert totals == {"source": 21.0, "batched": 1.0, "sink": 1.0}
    assert pipeline[0].stats is pipeline[0].step.stats  # the stats datatrove saves are the wrapped step's
