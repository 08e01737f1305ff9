"""Helper K: compute seed-1 pretext features once (project functions), save to /tmp/kfeat.pt."""
import sys, time
from pathlib import Path
import torch
import torch.nn.functional as F
from bench.data import load_dataset
from bench.stages import StageStore
from methods.stages.simclr_pretext import SimCLRPretext, load_pretext, pretext_features
from methods.engine import eval_pass, conv_layout
from methods.augment.gpu import NORMALIZATION, resize_eval

KEY = "73b2ceda9f5219269c56"
torch.manual_seed(0)
dev = torch.device("cpu")
art, meta = StageStore("/tmp/kstore/stages").load("simclr_pretext", KEY)
pcfg = SimCLRPretext.Config(**art["config"])
net = load_pretext(art, dev)
print("net.training", net.training, "cfg", pcfg.precision, pcfg.normalization, NORMALIZATION[pcfg.normalization])
ds = load_dataset("cifar10", Path("data"))
sp = ds.splits
print("data", ds.md5, sp.x_train.shape, sp.x_train.dtype, sp.x_test.shape)
mean, std = NORMALIZATION[pcfg.normalization]
prep = lambda xb: conv_layout(resize_eval(xb, pcfg.image_size, mean, std), dev)

def hidden_fn(xb):
    h = net.backbone(xb)
    pre = net.head[0](h)
    hid = torch.relu(pre)
    z = net.head[2](hid)
    return h, pre, hid, z

out = {}
for split, x in (("train", sp.x_train), ("test", sp.x_test)):
    t = time.time()
    with torch.no_grad():
        h, pre, hid, z = eval_pass(hidden_fn, x, prep, 1024, dev, pcfg.precision)
    print(split, "forward s", round(time.time() - t, 1), flush=True)
    out[split] = {"h": h, "pre": pre, "hid": hid, "z": z}
    # check the project's pretext_features gives the same normalised features (first 2048 images)
    fh = pretext_features(net, x[:2048], pcfg, dev, "head", 1024)
    fb = pretext_features(net, x[:2048], pcfg, dev, "backbone", 1024)
    print(split, "max|pretext_features(head) - normalize(z)|", float((fh - F.normalize(z[:2048], dim=1)).abs().max()),
          "backbone", float((fb - F.normalize(h[:2048], dim=1)).abs().max()))
    # forward() itself
    with torch.no_grad():
        hh, zz = net(prep(x[:256]))
    print(split, "forward() z norms", zz.norm(dim=1)[:4].tolist(), "max|z-fwd|", float((F.normalize(z[:256], dim=1) - zz).abs().max()))
out["y_train"], out["y_test"] = sp.y_train, sp.y_test
torch.save(out, "/tmp/kfeat.pt")
print("saved")
