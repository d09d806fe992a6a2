"""Stage A of a build, as datatrove pipeline steps run once per input file (task rank = file index).

read (every record, unreadable ones as `dropped` docs) -> sample by id hash -> [decontaminate] -> [dedup
signatures] -> tokenize -> write intermediates. Documents are never removed from the stream: a step that rejects one
sets `metadata["status"] = "dropped"` and a `reason`, so the manifest can account for every input record.
"""
