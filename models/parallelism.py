"""How a Slurm job says it may be reshaped: the parallelism it declares in its comment.

Convention: one token ``opsloop:<kind>`` in the job's comment (``sbatch --comment=...``), among
any other words, where ``<kind>`` is

- ``dp`` data parallel: one replica per node, each holding the whole model; the job survives
  losing replicas, so ``slurm_shrink`` may release nodes from it while it runs, never below
  ``min=<n>`` nodes (``opsloop:dp:min=2``; without ``min`` one node must stay);
- ``ep`` expert parallel, ``tp`` tensor parallel, ``pp`` pipeline parallel: the model itself is
  split across the nodes, so losing one loses the job. Such a job is held, suspended or requeued
  whole, or left alone; never shrunk.

A job without the token declares nothing and is never shrunk either. More than one token, an
unknown kind or a malformed ``min`` is refused as undeclared (with a sentence saying why), so a typo
never makes a job elastic.

``shrink_problems`` is the decision both the guard (on what the proposal says the job declared)
and the Slurm sink (on the comment Slurm shows right before acting) take: a reason code and a sentence
per problem, none when the shrink may go ahead.

>>> declared("nightly run opsloop:dp:min=2")
Parallelism(kind='dp', min_nodes=2, problem='')
>>> [code for code, _ in shrink_problems(declared("opsloop:dp:min=2"), nodes_now=4, keep=2)]
[]
>>> for code, text in shrink_problems(declared("opsloop:ep"), nodes_now=4, keep=2):
...     print(code, "-", text)
not_elastic - the job declares expert parallelism (opsloop:ep): it is held or suspended whole, never shrunk
>>> shrink_problems(declared("opsloop:dp:min=3"), nodes_now=4, keep=2)[0][0]
'below_min_replicas'
>>> released_kw(released_nodes=2, gpus_per_node=8, kw_per_gpu=0.7)
11.2
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from opsloop.models.verify import VERIFIED, Outcome, pending_or_failed

PREFIX = "opsloop:"
ELASTIC = "dp"
WHOLE = {"ep": "expert", "tp": "tensor", "pp": "pipeline"}  # split models: every node holds a part of it
KINDS = (ELASTIC, *WHOLE)
_TOKEN = re.compile(r"opsloop:(?P<kind>[a-z]+)(?::min=(?P<min>[0-9]{1,6}))?")

# Reason codes (the guard lists them among its own):
NOT_DECLARED = "parallelism_not_declared"  # no valid opsloop:<kind> token: the job is never reshaped
NOT_ELASTIC = "not_elastic"  # ep, tp or pp: the model is split across the nodes
BELOW_MIN_REPLICAS = "below_min_replicas"  # the shrink would leave fewer nodes than the job's min
NOTHING_TO_RELEASE = "nothing_to_release"  # keeping as many nodes as the job has (or more) releases none
NO_ELASTIC_JOB = "no_elastic_job"  # a partition-form shrink: no running opsloop:dp job there is above its min
NODE_OVER_GPUS = "node_over_gpus"  # a partition-form shrink: every node that could go holds more GPUs than allowed
CODES = frozenset({NOT_DECLARED, NOT_ELASTIC, BELOW_MIN_REPLICAS, NOTHING_TO_RELEASE, NO_ELASTIC_JOB, NODE_OVER_GPUS})


class Parallelism(NamedTuple):
    kind: str | None  # dp, ep, tp, pp; None when the comment declares none (or declares it badly)
    min_nodes: int = 1  # dp: the fewest nodes the job runs on
    problem: str = ""  # why a comment with opsloop tokens declares nothing


def declared(comment: str | None) -> Parallelism:
    """The parallelism a job's comment declares.

    >>> declared("opsloop:tp")
    Parallelism(kind='tp', min_nodes=1, problem='')
    >>> declared(None).kind is None, declared("opsloop:dp opsloop:ep").problem
    (True, 'more than one opsloop token')
    >>> declared("opsloop:dp:min=x").problem
    "malformed token 'opsloop:dp:min=x'"
    """
    words = [w for w in (comment or "").replace(",", " ").split() if w.startswith(PREFIX)]
    if not words:
        return Parallelism(None)
    if len(words) > 1:
        return Parallelism(None, problem="more than one opsloop token")
    match = _TOKEN.fullmatch(words[0])
    if match is None:
        return Parallelism(None, problem=f"malformed token {words[0][:60]!r}")
    kind, minimum = match["kind"], match["min"]
    if kind not in KINDS:
        return Parallelism(None, problem=f"unknown parallelism {kind[:20]!r} (known: {', '.join(KINDS)})")
    if minimum is not None and kind != ELASTIC:
        return Parallelism(None, problem=f"min applies to dp only, not {kind}")
    if minimum is not None and int(minimum) < 1:
        return Parallelism(None, problem="min must be at least 1")
    return Parallelism(kind, int(minimum or 1))


def shrink_problems(parallelism: Parallelism, nodes_now: int, keep: int) -> list[tuple[str, str]]:
    """Why a running job on ``nodes_now`` nodes may not shrink to ``keep`` nodes; empty when it may."""
    if parallelism.kind is None:
        why = f" ({parallelism.problem})" if parallelism.problem else ""
        return [(NOT_DECLARED, f"the job declares no parallelism{why}: only an opsloop:dp job is shrunk")]
    if parallelism.kind in WHOLE:
        return [(NOT_ELASTIC, f"the job declares {WHOLE[parallelism.kind]} parallelism (opsloop:{parallelism.kind}): "
                              f"it is held or suspended whole, never shrunk")]
    if keep >= nodes_now:
        return [(NOTHING_TO_RELEASE, f"keeping {keep} of the job's {nodes_now} nodes releases none")]
    if keep < parallelism.min_nodes:
        return [(BELOW_MIN_REPLICAS, f"keeping {keep} nodes is below the job's declared minimum of "
                                     f"{parallelism.min_nodes} (opsloop:dp:min={parallelism.min_nodes})")]
    return []


def released_kw(released_nodes: int, gpus_per_node: int, kw_per_gpu: float) -> float:
    """GPU power a shrink takes off the site: the released nodes' GPUs at the site's per-GPU estimate."""
    return round(released_nodes * gpus_per_node * kw_per_gpu, 6)


@dataclass(frozen=True)
class JobShape:
    """A job as the shrink sees it in Slurm: where it runs, on how many GPUs per node, what it declares."""

    job_id: str
    state: str
    partition: str
    nodes: tuple[str, ...]  # expanded node names, in Slurm's order
    gpus_per_node: int
    comment: str = ""


def kept_and_released(shape: JobShape, keep: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The nodes ``scontrol update JobId=.. NumNodes=keep`` keeps (the first ``keep`` of the job's list, as
    Slurm's node selection releases the last ones) and the ones it releases.

    >>> kept_and_released(JobShape("7", "RUNNING", "batch", ("n1", "n2", "n3", "n4"), 8), 2)
    (('n1', 'n2'), ('n3', 'n4'))
    """
    return shape.nodes[:keep], shape.nodes[keep:]


class Release(NamedTuple):
    """One job a partition-form shrink takes nodes from: the job as Slurm showed it and the nodes it keeps."""

    shape: JobShape
    keep: int

    @property
    def gpus(self) -> int:
        return (len(self.shape.nodes) - self.keep) * self.shape.gpus_per_node


def choose_releases(shapes, gpus: int, max_jobs: int) -> tuple[list[Release], list[tuple[str, str]]]:
    """Which running jobs give nodes back to release up to ``gpus`` GPUs, on at most ``max_jobs`` jobs.

    Only a running job declaring ``opsloop:dp`` with GPUs on more nodes than its ``min`` gives anything;
    the one with the most GPUs above its minimum goes first, then the next, each releasing whole nodes
    (the last ones of its list, as Slurm does) while the GPUs left allow, and none a node another
    release already frees. Returns the releases, or none and the reason code and sentence why.

    >>> dp = JobShape("7", "RUNNING", "batch", ("n1", "n2", "n3", "n4"), 4, "opsloop:dp:min=2")
    >>> tp = JobShape("8", "RUNNING", "batch", ("n1", "n2", "n3", "n4"), 4, "opsloop:tp")
    >>> [(r.shape.job_id, r.keep, r.gpus) for r in choose_releases([tp, dp], gpus=6, max_jobs=4)[0]]
    [('7', 3, 4)]
    >>> choose_releases([tp], gpus=8, max_jobs=4)[1][0][0]
    'no_elastic_job'
    >>> choose_releases([dp], gpus=3, max_jobs=4)[1][0][0]
    'node_over_gpus'
    """
    def surplus(shape: JobShape) -> int:
        return max(0, len(shape.nodes) - declared(shape.comment).min_nodes)

    elastic = [s for s in shapes if s.state == "RUNNING" and s.gpus_per_node > 0
               and declared(s.comment).kind == ELASTIC and surplus(s) > 0]
    if not elastic:
        return [], [(NO_ELASTIC_JOB, "no running opsloop:dp job with GPUs runs on more nodes than its declared "
                                     "minimum: nothing to release")]
    elastic.sort(key=lambda s: (-surplus(s) * s.gpus_per_node, int(s.job_id) if s.job_id.isdigit() else 0, s.job_id))
    chosen, left, taken = [], gpus, set()
    for shape in elastic:
        if len(chosen) >= max_jobs:
            break
        release = min(surplus(shape), left // shape.gpus_per_node)
        keep = len(shape.nodes) - release
        if release > 0 and not taken & set(shape.nodes[keep:]):  # a node is held free for one job only
            chosen.append(Release(shape, keep))
            taken |= set(shape.nodes[keep:])
            left -= release * shape.gpus_per_node
    if not chosen:
        smallest = min(s.gpus_per_node for s in elastic)
        return [], [(NODE_OVER_GPUS, f"the smallest node an opsloop:dp job could release holds {smallest} GPUs, more "
                                     f"than the {gpus} this action may release")]
    return chosen, []


def judge_shrink(job_id: str, kept: tuple[str, ...], shape: JobShape | None, now_ms: int,
                 deadline_ms: int) -> Outcome:
    """Verified when the job runs on exactly the nodes it was to keep; a job gone from the queue counts as done.

    >>> shape = JobShape("7", "RUNNING", "batch", ("n1", "n2"), 8)
    >>> judge_shrink("7", ("n1", "n2"), shape, now_ms=0, deadline_ms=1).text
    'job 7 runs on n1,n2 (2 nodes) as planned'
    >>> judge_shrink("7", ("n1",), shape, now_ms=5, deadline_ms=1).status
    'failed'
    """
    if shape is None or shape.state not in ("RUNNING", "SUSPENDED", "COMPLETING"):
        return Outcome(VERIFIED, f"job {job_id} has left the queue or stopped running: nothing of it draws power")
    if tuple(shape.nodes) == tuple(kept):
        return Outcome(VERIFIED, f"job {job_id} runs on {','.join(kept)} ({len(kept)} nodes) as planned")
    return pending_or_failed(now_ms, deadline_ms, f"job {job_id} still on {','.join(shape.nodes)}",
                             f"job {job_id} runs on {','.join(shape.nodes)}, expected {','.join(kept)}")
