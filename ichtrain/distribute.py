"""Distributed training: this process's role in a multi-worker cluster (``TF_CONFIG``), the
tf.distribute strategy of ``--strategy``, and the Keras workaround multi-worker training needs."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ichprep.errors import UsageError

__all__ = ["STRATEGIES", "WorkerRole", "worker_role", "make_strategy", "fix_keras_multi_worker"]

STRATEGIES = ("default", "mirrored", "multi-worker")


@dataclass(frozen=True)
class WorkerRole:
    """This process's place in a multi-worker run, from ``TF_CONFIG``."""

    task_type: str
    task_id: int
    workers: int  # training processes in the cluster (chief + workers)
    chief: bool


def worker_role(strategy: str, environ=os.environ) -> WorkerRole:
    """Parse and check ``TF_CONFIG`` for ``--strategy multi-worker``; a single process otherwise."""
    if strategy != "multi-worker":
        return WorkerRole("chief", 0, 1, True)
    hint = ('set TF_CONFIG on every worker, e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}')
    text = environ.get("TF_CONFIG")
    if not text:
        raise UsageError(f"--strategy multi-worker needs TF_CONFIG, which is not set: {hint}")
    try:
        tfc = json.loads(text)
        cluster, task = tfc["cluster"], tfc["task"]
        task_type, task_id = str(task["type"]), int(task["index"])
        members = {k: list(v) for k, v in cluster.items() if k in ("chief", "worker")}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"TF_CONFIG is not a cluster spec ({type(exc).__name__}: {exc}); {hint}. "
                         f"Received: {text[:200]!r}") from None
    if task_type not in members or not 0 <= task_id < len(members[task_type]):
        raise UsageError(f"TF_CONFIG's task {task_type}:{task_id} is not in its cluster {members}; {hint}")
    chief = task_type == "chief" or ("chief" not in members and task_type == "worker" and task_id == 0)
    return WorkerRole(task_type, task_id, sum(len(v) for v in members.values()), chief)


def make_strategy(name: str):
    import tensorflow as tf

    if name == "mirrored":  # every local GPU (one replica each); the CPU when there is none
        return tf.distribute.MirroredStrategy()
    if name == "multi-worker":  # synchronous data parallelism across the TF_CONFIG cluster
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def fix_keras_multi_worker(model, strategy) -> None:
    """Work around keras-team/keras#20585: Keras 3's ``fit`` fails under MultiWorkerMirroredStrategy, twice.

    1. Before training it builds metrics and optimizer from the first batch *reduced across workers*
       ("Attempt to convert a value (PerReplica...)"); only the batch's shapes are used, and this worker's
       own replica batch has the same ones.
    2. Each step reduces the logged metric values across workers with ``axis=0``, which scalars do not have
       ("Invalid reduction dimension 0"); they are averaged over replicas here with ``axis=None``.
    Both are overridden on this model instance only; gradients are still all-reduced by the optimizer.
    """
    import keras
    import tensorflow as tf

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = keras.tree.map_structure(lambda v: strategy.experimental_local_results(v)[0], next(it))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    def make_function(step_function):
        @tf.function(reduce_retracing=True)
        def one_step_on_data(data):
            outputs = strategy.run(step_function, args=(data,))
            return keras.tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), outputs)

        def function(iterator):
            batch = iterator.get_next_as_optional()
            if not batch.has_value():
                raise StopIteration
            return one_step_on_data(batch.get_value())

        return function

    model._maybe_symbolic_build = maybe_symbolic_build
    model._make_function = make_function
