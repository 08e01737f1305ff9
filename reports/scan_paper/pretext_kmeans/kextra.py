"""Helper K: (f) does the head's class structure exist locally? t-SNE(2-d) + k-means (issue #38's route) and spectral
clustering on the 10-NN graph, both on the 10k TEST features only (transductive, diagnostic, not the protocol)."""
import sys, json, time
import numpy as np, torch, torch.nn.functional as F
from sklearn.manifold import TSNE
from sklearn.cluster import KMeans, SpectralClustering
from bench.metrics import evaluate
d = torch.load("/tmp/kfeat.pt")
y = d["y_test"].numpy()
which = sys.argv[1:] or ["z", "h"]
for f in which:
    x = F.normalize(d["test"][f], dim=1).numpy()
    t = time.time()
    sc = SpectralClustering(n_clusters=10, affinity="nearest_neighbors", n_neighbors=10, random_state=0,
                            assign_labels="cluster_qr", n_jobs=2).fit(x)
    m = evaluate(y, sc.labels_)
    print(json.dumps({"variant": f"f_spectral_knn10_test_{f}", "acc": round(m["acc"], 4), "nmi": round(m["nmi"], 4), "ari": round(m["ari"], 4), "s": round(time.time() - t, 1)}), flush=True)
    t = time.time()
    e = TSNE(n_components=2, init="pca", random_state=0, n_jobs=2).fit_transform(x)
    lab = KMeans(10, n_init=10, random_state=0).fit_predict(e)
    m = evaluate(y, lab)
    print(json.dumps({"variant": f"f_tsne2d_kmeans_test_{f}", "acc": round(m["acc"], 4), "nmi": round(m["nmi"], 4), "ari": round(m["ari"], 4), "s": round(time.time() - t, 1)}), flush=True)
