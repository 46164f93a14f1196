"""The review store as an input of the stages that learn from reviewed images."""

from __future__ import annotations

from ..job import Job

REVIEW_STORE = "review/reviewed.json"   # under the work dir; written by `wsis review import`


def reviewed_entries(job: Job, switch: str) -> dict[str, dict]:
    """{image id: review store entry} of the job's images when ``review.<switch>`` is on, else
    {}: the entries the stage's fingerprint holds (``ImageInputs`` in the engine)."""
    if not job.cfg["review"][switch]:
        return {}
    # imported here: the stages that import this module for their training code are also
    # imported by instance synthesis, which needs nothing of the review package
    from wsis.review.formats import read_store
    ids = set(job.ids)
    return {i: e for i, e in read_store(job.out_dir.parent / REVIEW_STORE)["images"].items() if i in ids}
