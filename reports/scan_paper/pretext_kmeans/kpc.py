"""Helper K: where is the class signal in the normalised head? Per principal component (train): variance share and the
fraction of that PC's variance explained by the class means (labels for diagnostics only)."""
import sys, json
import torch, torch.nn.functional as F
d = torch.load("/tmp/kfeat.pt")
for f in ("z", "h"):
    x = F.normalize(d["train"][f], dim=1); y = d["y_train"]
    mu = x.mean(0); xc = x - mu
    u, s, v = torch.linalg.svd(xc, full_matrices=False)
    p = xc @ v.T  # [N, D] PC scores
    var = p.var(0)
    cm = torch.stack([p[y == c].mean(0) for c in range(10)])  # [10, D]
    betw = (cm ** 2).mean(0)  # classes are balanced (5000 each)
    ratio = betw / var
    share = var / var.sum()
    def blk(a, b):
        return dict(pcs=f"{a+1}-{b}", var_share=round(float(share[a:b].sum()), 4),
                    class_fraction=round(float(betw[a:b].sum() / var[a:b].sum()), 4))
    D = x.shape[1]
    cuts = [0, 10, 20, 40, 60, 80, 100, 128] if D == 128 else [0, 10, 20, 40, 80, 160, 320, 512]
    print(json.dumps({"features": f, "blocks": [blk(a, b) for a, b in zip(cuts, cuts[1:])],
                      "eigs_tail": [round(float(v_), 6) for v_ in var[-8:]]}), flush=True)
