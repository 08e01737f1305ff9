"""One epoch engine with hooks for every gradient-trained method (see engine.py), its hooks and the GPU data path."""

from methods.engine.engine import Engine, EngineConfig, Pass
from methods.engine.gpu import (
    autocast,
    conv_layout,
    epoch_batches,
    eval_mode,
    eval_pass,
    prepare_training,
    unlabeled_images,
)
from methods.engine.hooks import (
    CheckpointHook,
    CurveLogHook,
    EarlyStopHook,
    EMAHook,
    EvalHook,
    FaultInjectionHook,
    Hook,
    LrScheduleHook,
    MemoryBankHook,
    MetricHook,
    MomentumResetHook,
    Priority,
    StreamOrderHook,
    TargetUpdateHook,
    TimeBudgetExceeded,
    cosine_lr,
    multistep_lr,
    set_lr,
)

__all__ = ["Engine", "EngineConfig", "Pass", "Hook", "Priority", "CheckpointHook", "CurveLogHook", "EarlyStopHook",
           "EMAHook", "EvalHook", "FaultInjectionHook", "LrScheduleHook", "MemoryBankHook", "MetricHook",
           "MomentumResetHook",
           "StreamOrderHook", "TargetUpdateHook", "TimeBudgetExceeded",
           "autocast", "conv_layout", "epoch_batches", "eval_mode", "eval_pass", "prepare_training", "unlabeled_images",
           "cosine_lr", "multistep_lr", "set_lr"]
