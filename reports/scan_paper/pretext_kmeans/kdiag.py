"""Helper K: geometry diagnostics of the seed-1 features (labels used for diagnostics only)."""
import sys, json, time
import numpy as np
import torch
import torch.nn.functional as F
from bench.metrics import evaluate
from bench.data import load_dataset
from pathlib import Path

d = torch.load("/tmp/kfeat.pt")
tr, te = d["train"], d["test"]
ytr, yte = d["y_train"], d["y_test"]
N = F.normalize

def geom(name, a, b):
    an, bn = N(a, dim=1), N(b, dim=1)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(an.shape[0], generator=g)[:5000]
    s = an[idx] @ an[idx].T
    off = ~torch.eye(len(idx), dtype=bool)
    y = ytr[idx]
    same = (y[:, None] == y[None, :]) & off
    diff = y[:, None] != y[None, :]
    mu = an.mean(0)
    # class means
    cm = torch.stack([an[ytr == c].mean(0) for c in range(10)])
    cmn = N(cm, dim=1)
    cc = cmn @ cmn.T
    # spectrum of centred features
    sv = torch.linalg.svdvals(an - mu)
    var = sv ** 2 / (sv ** 2).sum()
    eff_rank = float(torch.exp(-(var * var.clamp_min(1e-12).log()).sum()))
    # kNN (k=20, cosine, majority vote) test -> train
    sims = bn @ an.T
    nn_idx = sims.topk(20, dim=1).indices
    votes = ytr[nn_idx]
    knn_pred = torch.mode(votes, dim=1).values
    knn_acc = float((knn_pred == yte).float().mean())
    # fraction of the 20 nearest train neighbours (train->train) with the same class (SCAN's neighbour accuracy)
    out = dict(features=name, dim=a.shape[1],
               raw_norm_mean=round(float(a.norm(dim=1).mean()), 3), raw_norm_cv=round(float(a.norm(dim=1).std() / a.norm(dim=1).mean()), 3),
               mean_pairwise_cos=round(float(s[off].mean()), 4), within_class_cos=round(float(s[same].mean()), 4),
               between_class_cos=round(float(s[diff].mean()), 4), norm_of_mean=round(float(mu.norm()), 4),
               class_mean_norms=round(float(cm.norm(dim=1).mean()), 4),
               class_mean_cos_offdiag=round(float(cc[~torch.eye(10, dtype=bool)].mean()), 4),
               top_pc_var=[round(float(v), 4) for v in var[:10]], eff_rank=round(eff_rank, 1),
               knn20_test_acc=round(knn_acc, 4))
    # ratio of between-class-mean scatter to total variance (linear separability proxy, Fisher-like)
    tot = float(((an - mu) ** 2).sum(1).mean())
    betw = float(sum(((cm[c] - mu) ** 2).sum() * (ytr == c).float().mean() for c in range(10)))
    out["between_class_var_fraction"] = round(betw / tot, 4)
    print(json.dumps(out), flush=True)

if __name__ == "__main__":
    for name in ["z", "h", "hid", "pre"]:
        geom(name, tr[name], te[name])
