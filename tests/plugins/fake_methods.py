"""Test-only methods (loaded through BENCH_PLUGINS, also inside Ray workers)."""

import os

import torch

from bench.method import ClusteringMethod, ClusterOutput, MethodConfig
from bench.registry import register_method


@register_method
class FirstPixel(ClusteringMethod):
    """Deterministic and instant: clusters by a binned pixel value; for plumbing tests."""

    name = "test_first_pixel"
    selection_rule = "none (test method)"

    class Config(MethodConfig):
        pixel: int = 20

    def run(self, data, ctx):
        v = data.x_eval.flatten(1)[:, self.config.pixel].long()
        ctx.log_epoch(1, loss=0.5)
        return ClusterOutput(labels=(v * data.n_clusters) // 256)


@register_method
class NaNLoss(ClusteringMethod):
    name = "test_nan"

    class Config(MethodConfig):
        nan_on_seed: int = 1

    def run(self, data, ctx):
        ctx.log_epoch(1, loss=1.0)
        loss = torch.tensor(float("nan")) if ctx.seed == self.config.nan_on_seed else torch.tensor(0.1)
        ctx.check_finite(loss)
        return ClusterOutput(labels=torch.zeros(len(data.x_eval), dtype=torch.long))


@register_method
class WrongLength(ClusteringMethod):
    name = "test_wrong_length"

    def run(self, data, ctx):
        return ClusterOutput(labels=torch.zeros(3, dtype=torch.long))


@register_method
class KillsWorker(ClusteringMethod):
    """Ends its process abruptly on one seed, as the OOM killer would."""

    name = "test_killer"

    class Config(MethodConfig):
        kill_on_seed: int = 1

    def run(self, data, ctx):
        if ctx.seed == self.config.kill_on_seed:
            os._exit(9)
        return ClusterOutput(labels=torch.zeros(len(data.x_eval), dtype=torch.long))


@register_method
class SignalsItself(ClusteringMethod):
    """Receives SIGTERM on one seed, as a job that hits its time limit does."""

    name = "test_sigterm"

    class Config(MethodConfig):
        on_seed: int = 1

    def run(self, data, ctx):
        if ctx.seed == self.config.on_seed:
            import signal

            os.kill(os.getpid(), signal.SIGTERM)
        return ClusterOutput(labels=torch.zeros(len(data.x_eval), dtype=torch.long))


@register_method
class Sleeps(ClusteringMethod):
    """Takes ``seconds`` per seed (a trial long enough to be interrupted) and logs each computation to
    ``<store>/computed.log`` (one line per key computed: to count that no key is computed twice)."""

    name = "test_sleep"

    class Config(MethodConfig):
        seconds: float = 1.0

    def run(self, data, ctx):
        import time

        time.sleep(self.config.seconds)
        with open(ctx.artifact_dir.parent.parent / "computed.log", "a") as fh:
            fh.write(f"{ctx.artifact_dir.name} {os.getpid()}\n")
        ctx.log_epoch(1, loss=0.1)
        v = data.x_eval.flatten(1)[:, 20].long()
        return ClusterOutput(labels=(v * data.n_clusters) // 256)


@register_method
class CollapsesOnSeed(ClusteringMethod):
    """Balanced clusters (image index modulo K), except one seed that puts every image in one cluster."""

    name = "test_collapse"
    selection_rule = "none (test method)"

    class Config(MethodConfig):
        collapse_on_seed: int = 3

    def run(self, data, ctx):
        n = len(data.x_eval)
        if ctx.seed == self.config.collapse_on_seed:
            return ClusterOutput(labels=torch.zeros(n, dtype=torch.long))
        return ClusterOutput(labels=torch.arange(n) % data.n_clusters)


@register_method
class MarksArtifacts(ClusteringMethod):
    """Writes ``attempt.txt`` (a fresh nonce per computation, also in the record's info) into its artifact folder
    first, then takes ``seconds``: while it computes, the folder holds this attempt's file beside the previous
    record, as a checkpointing method's does."""

    name = "test_marks_artifacts"

    class Config(MethodConfig):
        seconds: float = 0.0

    def run(self, data, ctx):
        import time

        nonce = os.urandom(8).hex()
        ctx.artifact_dir.mkdir(parents=True, exist_ok=True)
        (ctx.artifact_dir / "attempt.txt").write_text(nonce)
        time.sleep(self.config.seconds)
        return ClusterOutput(labels=torch.zeros(len(data.x_eval), dtype=torch.long), info={"nonce": nonce})
