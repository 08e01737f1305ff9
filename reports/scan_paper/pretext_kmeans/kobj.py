"""Helper K: does the k-means objective prefer the class partition? Inertia of the true-class partition vs the found
one; Lloyd iterations started from the class means (labels for this diagnostic only)."""
import sys, json
import numpy as np, torch, torch.nn.functional as F
from bench.metrics import evaluate
d = torch.load("/tmp/kfeat.pt")
y, yt = d["y_train"], d["y_test"].numpy()
for f in ("z", "h"):
    x = F.normalize(d["train"][f], dim=1); xt = F.normalize(d["test"][f], dim=1)
    cm = torch.stack([x[y == c].mean(0) for c in range(10)])
    class_inertia = float(((x - cm[y]) ** 2).sum())
    c = cm.clone()
    for it in range(300):
        lab = torch.cdist(x, c).argmin(1)
        new = torch.stack([x[lab == k].mean(0) for k in range(10)])
        if float(((new - c) ** 2).sum()) < 1e-10: break
        c = new
    lab = torch.cdist(x, c).argmin(1)
    inertia = float(((x - c[lab]) ** 2).sum())
    m = evaluate(yt, torch.cdist(xt, c).argmin(1).numpy())
    m0 = evaluate(yt, torch.cdist(xt, cm).argmin(1).numpy())
    print(json.dumps({"features": f, "class_partition_inertia": round(class_inertia, 1),
                      "nearest_class_mean_test_acc": round(m0["acc"], 4),
                      "lloyd_from_class_means": {"iters": it + 1, "inertia": round(inertia, 1), "test_acc": round(m["acc"], 4),
                                                  "nmi": round(m["nmi"], 4), "ari": round(m["ari"], 4)}}), flush=True)
