"""Helper K: k-means variants on the saved seed-1 features (/tmp/kfeat.pt). Usage: python kvariants.py [names...]"""
import sys, time, json
import numpy as np
import torch
import torch.nn.functional as F
from methods.cluster.kmeans import kmeans
from bench.metrics import evaluate, cluster_profile

d = torch.load("/tmp/kfeat.pt")
tr, te = d["train"], d["test"]
ytr, yte = d["y_train"].numpy(), d["y_test"].numpy()
N = F.normalize

def pca_whiten(a, b, dim=None, eps=1e-6):
    mu = a.mean(0)
    u, s, v = torch.linalg.svd(a - mu, full_matrices=False)
    k = dim or a.shape[1]
    w = v[:k].T / (s[:k] / (a.shape[0] - 1) ** 0.5 + eps)
    return (a - mu) @ w, (b - mu) @ w

def centred(a, b):
    mu = a.mean(0)
    return a - mu, b - mu

VARIANTS = {
    "a_head_norm": lambda: (N(tr["z"], dim=1), N(te["z"], dim=1)),
    "b_head_raw": lambda: (tr["z"], te["z"]),
    "c_backbone_norm": lambda: (N(tr["h"], dim=1), N(te["h"], dim=1)),
    "d_backbone_raw": lambda: (tr["h"], te["h"]),
    "f_hidden_relu_norm": lambda: (N(tr["hid"], dim=1), N(te["hid"], dim=1)),
    "f_hidden_relu_raw": lambda: (tr["hid"], te["hid"]),
    "f_hidden_prerelu_norm": lambda: (N(tr["pre"], dim=1), N(te["pre"], dim=1)),
    "f_head_norm_pcawhite": lambda: pca_whiten(N(tr["z"], dim=1), N(te["z"], dim=1)),
    "f_head_norm_pca16": lambda: tuple(x @ torch.linalg.svd(N(tr["z"], dim=1) - N(tr["z"], dim=1).mean(0), full_matrices=False)[2][:16].T
                                       for x in (N(tr["z"], dim=1), N(te["z"], dim=1))),
    "f_head_norm_pcawhite80": lambda: pca_whiten(N(tr["z"], dim=1), N(te["z"], dim=1), dim=80),
    "f_head_centred_renorm": lambda: tuple(N(x, dim=1) for x in centred(N(tr["z"], dim=1), N(te["z"], dim=1))),
    "f_backbone_pcawhite": lambda: pca_whiten(N(tr["h"], dim=1), N(te["h"], dim=1), dim=128),
}

def run(name, seeds=(0,)):
    a, b = VARIANTS[name]()
    rows = []
    for s in seeds:
        t = time.time()
        g = torch.Generator().manual_seed(1000 + s)
        km = kmeans(a.float().contiguous(), 10, n_init=10, generator=g)
        pred = torch.cdist(b.float(), km.centers).argmin(1).numpy()
        m = evaluate(yte, pred)
        mtr = evaluate(ytr, km.labels.numpy())
        prof = cluster_profile(pred, 10, yte)
        rows.append(dict(variant=name, seed=s, acc=round(m["acc"], 4), nmi=round(m["nmi"], 4), ari=round(m["ari"], 4),
                         train_acc=round(mtr["acc"], 4), inertia=round(km.inertia, 2), n_iter=km.n_iter,
                         centre_norms=[round(float(x), 3) for x in km.centers.norm(dim=1)],
                         largest_share=prof.get("largest_share"), s=round(time.time() - t, 1)))
        print(json.dumps(rows[-1]), flush=True)
    return rows

if __name__ == "__main__":
    names = sys.argv[1:] or list(VARIANTS)
    for n in names:
        run(n, seeds=(0, 1, 2) if n in ("a_head_norm", "c_backbone_norm") else (0,))
