"""The harness's run-time switches from the environment, parsed in one place.

Each ``BENCH_*`` knob that changes how trials run is read through a function here; ``check_environment`` parses
them all before `bench run` / `bench trial` plan anything, so a malformed value is one ``error:`` line (exit 2)
instead of a traceback inside a trial or, worse, a switch silently ignored (``BENCH_CUDA_GRAPHS=false`` used to
leave graphs on). Ray workers get the same variables (bench.runner.PASSED_ENV) and parse them the same way.
The data, cache and store folders (``BENCH_DATA``, ``BENCH_CACHE``, ``BENCH_STORE``) are checked as folders where
they are used; ``BENCH_PLUGINS`` where the registry imports them.
"""

from __future__ import annotations

import math
import os
import re
from typing import NamedTuple

from bench.errors import BenchError, brief


def cuda_graphs_enabled() -> bool:
    """``BENCH_CUDA_GRAPHS``: unset or ``1`` replays the steps that allow it as CUDA graphs; ``0`` runs every engine
    pass eagerly (stages included), e.g. where a driver or torch version cannot capture a step."""
    raw = os.environ.get("BENCH_CUDA_GRAPHS")
    if raw is None or raw.strip() == "1":
        return True
    if raw.strip() == "0":
        return False
    raise BenchError(f"BENCH_CUDA_GRAPHS={brief(raw)} is neither 0 nor 1; set BENCH_CUDA_GRAPHS=0 to run every step "
                     "eagerly, or unset it")


def checkpoint_interval_s() -> float:
    """``BENCH_CHECKPOINT_S``: seconds between progress checkpoints of long loops (default 120). A killed trial
    loses at most this much work; 0 checkpoints at every opportunity (tests)."""
    raw = os.environ.get("BENCH_CHECKPOINT_S")
    if raw is None:
        return 120.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise BenchError(f"BENCH_CHECKPOINT_S={brief(raw)} is not a number of seconds >= 0; set e.g. "
                         "BENCH_CHECKPOINT_S=120, or unset it")
    return value


#: the loops that poll BENCH_FAULT_NAN: the stacked autoencoder's layer-wise pretraining and fine-tuning
#: (methods/nn/autoencoder.py) and DEC/IDEC's self-training (methods/dec.py, FaultInjectionHook("cluster"))
FAULT_STAGES = re.compile(r"pretrain_layer[1-9][0-9]*|finetune|cluster")


class FaultSpec(NamedTuple):
    seed: int
    stage: str
    iteration: int


def fault_nan_specs() -> list[FaultSpec]:
    """``BENCH_FAULT_NAN=SEED@STAGE:ITER[,...]``: debug fault injection, never part of a recipe (the loop of STAGE
    poisons seed SEED's weights with NaN after iteration ITER; tests of per-seed isolation, tests/test_faults.py)."""
    specs = []
    for item in filter(None, (s.strip() for s in os.environ.get("BENCH_FAULT_NAN", "").split(","))):
        seed, at, rest = item.partition("@")
        stage, colon, it = rest.rpartition(":")
        try:
            if not (at and colon and stage):
                raise ValueError
            spec = FaultSpec(int(seed), stage, int(it))
            if spec.seed < 0 or spec.iteration < 0:
                raise ValueError  # no seed or iteration matches: the fault would silently never fire
        except ValueError:
            raise BenchError(f"BENCH_FAULT_NAN item {brief(item)} is not SEED@STAGE:ITER (e.g. 1@cluster:40); "
                             "fix it or unset BENCH_FAULT_NAN") from None
        if not FAULT_STAGES.fullmatch(spec.stage):  # a typo would never fire either
            raise BenchError(f"BENCH_FAULT_NAN item {brief(item)}: no loop named {brief(spec.stage)} injects faults; "
                             "use pretrain_layerN, finetune or cluster")
        specs.append(spec)
    return specs


def check_environment() -> None:
    """Parse every switch above; the first malformed one raises its :class:`BenchError`."""
    cuda_graphs_enabled()
    checkpoint_interval_s()
    fault_nan_specs()
