"""Helper K: (e) scikit-learn KMeans on the normalised head (fit on train, predict test)."""
import sys, json, time
import numpy as np, torch, torch.nn.functional as F
from sklearn.cluster import KMeans
from bench.metrics import evaluate
d = torch.load("/tmp/kfeat.pt")
a = F.normalize(d["train"]["z"], dim=1).numpy().astype(np.float64); b = F.normalize(d["test"]["z"], dim=1).numpy().astype(np.float64)
for rs in (0, 1, 2):
    t = time.time()
    km = KMeans(n_clusters=10, n_init=10, random_state=rs).fit(a)
    m = evaluate(d["y_test"].numpy(), km.predict(b))
    print(json.dumps({"variant": "e_sklearn_head_norm", "random_state": rs, "acc": round(m["acc"], 4), "nmi": round(m["nmi"], 4),
                      "ari": round(m["ari"], 4), "inertia": round(float(km.inertia_), 2), "s": round(time.time() - t, 1)}), flush=True)
