"""The stacked denoising autoencoder of DEC/IDEC (d-500-500-2000-10), pretrained once per seed and data and
shared by AE + k-means, DEC and IDEC (ClustPy's fairness device: the three start from the same weights).

Recipe: DEC's official Caffe scripts (piiswrong/dec, dec/pretrain.py), see methods/nn/autoencoder.py for the
training code and each Caffe detail at its default in :class:`methods.nn.autoencoder.AutoencoderConfig`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from bench.context import TrialContext
from bench.method import ClusteringData
from bench.stages import Stage, StageConfig, register_stage


@register_stage
class StackedDenoisingAutoencoder(Stage):
    name = "sdae"
    version = 1
    batchable = True  # several seeds train as one BatchedMLPAutoencoder (one baddbmm per layer)
    gpu_share = 0.25

    class Config(StageConfig):
        """Built from a method's AutoencoderConfig (``AutoencoderConfig.sdae_request``); field meanings there."""

        hidden_dims: tuple[int, ...] = (500, 500, 2000, 10)
        input_scale: float = Field(0.02, gt=0)
        dropout: float = Field(0.2, ge=0, lt=1)
        lr: float = Field(0.1, gt=0)
        lr_step: int = Field(20000, ge=1)
        momentum: float = Field(0.9, ge=0)
        batch_size: int = Field(256, ge=1)
        iters_per_layer: int = Field(50000, ge=0)
        finetune_iters: int = Field(100000, ge=0)
        init_std: float = Field(0.01, gt=0)
        loss_scale: float = Field(0.5, gt=0)
        bias_lr_mult: float = Field(2.0, gt=0)
        momentum_burnin: int = Field(1000, ge=0)
        data_order: Literal["sequential", "shuffled"] = "sequential"
        cuda_graphs: bool = True
        tf32: bool = True
        log_every: int = Field(1000, ge=1, description="iterations between curve rows")

    def build(self, data: ClusteringData, inputs: dict[str, dict[str, Any]], ctx: TrialContext) -> dict[str, Any]:
        out = self.build_seeds(data, [inputs], [ctx])[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def build_seeds(self, data: ClusteringData, inputs: list[dict[str, dict[str, Any]]],
                    ctxs: list[TrialContext]) -> list[dict[str, Any] | BaseException]:
        """Greedy layer-wise denoising pretraining then end-to-end fine-tuning of every seed at once. A seed masked
        out by ``ctx.fail`` (non-finite loss) gets its failure, never its garbage weights."""
        from methods.nn.autoencoder import pretrain_stacked_batched, scaled_input

        x = scaled_input(data.x_train, self.config.input_scale, ctxs[0].device)
        ckpt = TrialContext.batch_checkpointer(ctxs, "sdae")  # progress, resumed by the next build of these keys
        states = pretrain_stacked_batched(x, self.config, ctxs, ckpt)
        dims = [x.shape[1], *self.config.hidden_dims]
        return [ctx.failure if ctx.failure is not None else {"state": st, "dims": dims}
                for ctx, st in zip(ctxs, states)]
