"""AE + k-means: k-means on the embedding of the pretrained stacked autoencoder.

The baseline of the DEC and IDEC papers (IDEC Table 2: 81.8% ACC on MNIST). It uses the very
autoencoder DEC and IDEC start from (the shared cached stage, same config and seed), and k-means
with 20 restarts and the same generator stream as DEC's initialisation, so its labels are exactly
DEC's starting point for that seed.
"""

from __future__ import annotations

from pydantic import Field

from bench.method import ClusteringData, ClusteringMethod, ClusterOutput, TrialContext
from bench.registry import register_method
from methods.cluster.kmeans import kmeans
from methods.engine.steps import matmul_tf32
from methods.nn.autoencoder import AutoencoderConfig, pretrained_autoencoders, scaled_input, with_ae_defaults


@register_method
class AEKMeans(ClusteringMethod):
    name = "ae_kmeans"
    label = "AE + k-means"
    paper = "k-means on the DEC/IDEC stacked autoencoder embedding (AE+k-means in IDEC, IJCAI 2017, Table 2)"
    selection_rule = "lowest k-means inertia over n_init restarts on the embedding (label-free)"
    train_split = "all"
    eval_split = "all"
    gpu_share = 0.25
    supports_seed_batch = True
    dataset_defaults = with_ae_defaults({})  # the input scaling of DEC/IDEC's stage on each dataset

    class Config(AutoencoderConfig):
        n_init: int = Field(20, ge=1, description="k-means restarts (DEC's initialisation uses 20)")
        max_iter: int = Field(300, ge=1)

    @classmethod
    def protocol_fields(cls, config):
        return config.protocol(batch_size=config.pretrain_batch_size)

    @classmethod
    def stages(cls, config):
        return {"autoencoder": config.sdae_request()}  # DEC's and IDEC's stacked autoencoder, same seed

    def run(self, data: ClusteringData, ctx: TrialContext) -> ClusterOutput:
        out = self.run_seeds(data, [ctx])[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def run_seeds(self, data: ClusteringData, ctxs: list[TrialContext]) -> list[ClusterOutput | BaseException]:
        cfg = self.config
        dev = ctxs[0].device
        ae = pretrained_autoencoders(ctxs)
        x = scaled_input(data.x_train, cfg.input_scale, dev)
        outs = []
        with matmul_tf32(cfg.tf32):
            z = ae.encode_all(x)
            z_eval = z if data.same_split else ae.encode_all(scaled_input(data.x_eval, cfg.input_scale, dev))
        # k-means distances in full fp32 (outside the TF32 block)
        for s, ctx in enumerate(ctxs):
            if ctx.failure is not None:  # masked out of the batch while pretraining: fails alone
                outs.append(ctx.failure)
                continue
            # the stream DEC's k-means initialisation uses, so labels match DEC's start
            res = kmeans(z[s], data.n_clusters, n_init=cfg.n_init, max_iter=cfg.max_iter,
                         generator=ctx.rng("kmeans_init"))
            labels = res.labels if data.same_split else \
                ((z_eval[s][:, None, :] - res.centers[None]) ** 2).sum(-1).argmin(1)
            ctx.log_epoch(0, inertia=res.inertia, n_iter=res.n_iter, eval_pred=labels)
            outs.append(ClusterOutput(labels=labels, info={"inertia": res.inertia, "n_iter": res.n_iter,
                                                           "seeds_trained_together": len(ctxs)}))
        return outs
