#!/usr/bin/env python3
"""PyTorch reference for wsss's benchmarks: the same workloads, shapes and optimiser.

The Rust benchmarks (`cargo run --release --example bench_classify` / `bench_segment`) run this
script when `python3 -c 'import torch'` works and print wsss and PyTorch side by side; it can
also be run on its own:

    python3 bench/torch_reference.py --suite classify --device cpu --reps 3
    python3 bench/torch_reference.py --suite segment --device cuda --reps 10

Workloads (batch 8, fixed seed, random inputs):
- classify: VGG-16 at torchvision widths without batch norm (or, with --arch
  efficientnet-lite0, EfficientNet-Lite0 dilated to output stride 16 as wsss's classifier),
  global average pooling and a linear head over 2 classes; forward (inference, no grad) and one
  AdamW training step (lr 1e-4, weight decay 1e-4, cross-entropy) at 128² and 224²;
- segment: DeepLab V3+ with a ResNet-18 encoder at output stride 16 (dilation in layer4),
  ASPP 256 channels at rates 6/12/18 with image pooling, a 48-channel low-level projection of
  layer1 and two 3×3 refinement convs, as in `src/model/deeplab.rs`; one AdamW training step and
  inference at 256².

Output: one JSON object per line, {"workload", "median_s", "min_s", "max_s", "peak_mib"}, where
the workload names match the Rust tables. Medians over --reps timed repetitions after one
warm-up; on CUDA each repetition ends with torch.cuda.synchronize().
"""

import argparse
import json
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH = 8
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class Vgg16Gap(nn.Module):
    def __init__(self, classes=2):
        super().__init__()
        layers, c = [], 3
        for v in VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(512, classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def conv_bn(cin, cout, k, dilation=1):
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Basic(nn.Module):
    """torchvision's BasicBlock with a dilation per conv (torchvision refuses dilation > 1)."""

    def __init__(self, cin, planes, stride, d1, d2):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, padding=d1, dilation=d1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=d2, dilation=d2, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.down = None
        if stride != 1 or cin != planes:
            self.down = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)), inplace=True)


def resnet18_os16():
    """ResNet-18 with layer4's stride replaced by dilation 2, as in `src/model/resnet.rs`
    (torchvision's `replace_stride_with_dilation=[False, False, True]` semantics)."""
    layers, cin = [], 64
    for li, planes in enumerate([64, 128, 256, 512]):
        if li == 3:
            blocks = [Basic(cin, planes, 1, 1, 2), Basic(planes, planes, 1, 2, 2)]
        else:
            stride = 1 if li == 0 else 2
            blocks = [Basic(cin, planes, stride, 1, 1), Basic(planes, planes, 1, 1, 1)]
        layers.append(nn.Sequential(*blocks))
        cin = planes
    stem = nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
    )
    return stem, layers


class DeepLabV3Plus(nn.Module):
    def __init__(self, classes=2):
        super().__init__()
        self.stem, (self.layer1, self.layer2, self.layer3, self.layer4) = resnet18_os16()
        self.aspp = nn.ModuleList([conv_bn(512, 256, 1)] + [conv_bn(512, 256, 3, d) for d in (6, 12, 18)])
        self.pool = conv_bn(512, 256, 1)
        self.project = conv_bn(5 * 256, 256, 1)
        self.low = conv_bn(64, 48, 1)
        self.refine = nn.Sequential(conv_bn(256 + 48, 256, 3), conv_bn(256, 256, 3))
        self.classifier = nn.Conv2d(256, classes, 1)

    def forward(self, x):
        h, w = x.shape[-2:]
        low = self.layer1(self.stem(x))
        high = self.layer4(self.layer3(self.layer2(low)))
        branches = [b(high) for b in self.aspp]
        p = self.pool(high.mean(dim=(2, 3), keepdim=True))
        branches.append(p.expand(-1, -1, *high.shape[-2:]))
        y = self.project(torch.cat(branches, 1))
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.refine(torch.cat([y, self.low(low)], 1))
        return F.interpolate(self.classifier(y), size=(h, w), mode="bilinear", align_corners=False)


LITE0 = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
         (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]


class MBConv(nn.Module):
    def __init__(self, cin, cout, e, k, stride, dilation):
        super().__init__()
        mid = cin * e
        layers = [] if e == 1 else [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid, eps=1e-3), nn.ReLU6()]
        layers += [
            nn.Conv2d(mid, mid, k, stride, dilation * (k // 2), dilation, groups=mid, bias=False),
            nn.BatchNorm2d(mid, eps=1e-3), nn.ReLU6(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout, eps=1e-3),
        ]
        self.body = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return y + x if self.skip else y


class EfficientNetLite0Gap(nn.Module):
    """EfficientNet-Lite0 (no squeeze-excitation, ReLU6, depthwise convs with PyTorch's
    symmetric padding), the last stride-2 stage dilated instead (output stride 16, as wsss's
    classifier), GAP -> linear head over 2 classes."""

    def __init__(self, classes=2):
        super().__init__()
        layers = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32, eps=1e-3), nn.ReLU6()]
        cin, stride_so_far, dilation = 32, 2, 1
        for i, (r, k, s, e, _, o) in enumerate(LITE0):
            prev = dilation
            if s > 1 and stride_so_far * s > 16:
                dilation, s = dilation * s, 1
            else:
                stride_so_far *= s
            for j in range(r):
                layers.append(MBConv(cin, o, e, k, s if j == 0 else 1, prev if j == 0 else dilation))
                cin = o
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280, eps=1e-3), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(1280, classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def timed(fn, reps, device):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for r in range(reps + 1):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        if r > 0:
            times.append(time.perf_counter() - t)
    times.sort()
    return times


def peak_mib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(name, times, device):
    print(
        json.dumps(
            {
                "workload": name,
                "median_s": times[len(times) // 2],
                "min_s": times[0],
                "max_s": times[-1],
                "peak_mib": peak_mib(device),
            }
        ),
        flush=True,
    )


def train_step(model, opt, x, loss_fn):
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x))
    loss.backward()
    opt.step()


def classify(device, reps, sizes, arch):
    model = (EfficientNetLite0Gap() if arch == "efficientnet-lite0" else Vgg16Gap()).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    y = torch.tensor([i % 2 for i in range(BATCH)], device=device)
    for size in sizes:
        x = torch.randn(BATCH, 3, size, size, device=device)
        model.eval()
        with torch.no_grad():
            report(f"forward {size}", timed(lambda: model(x), reps, device), device)
        model.train()
        t = timed(lambda: train_step(model, opt, x, lambda o: F.cross_entropy(o, y)), reps, device)
        report(f"train {size}", t, device)


def segment(device, reps):
    model = DeepLabV3Plus().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    x = torch.randn(BATCH, 3, 256, 256, device=device)
    y = (torch.arange(BATCH * 256 * 256, device=device) % 512 > 200).long().view(BATCH, 256, 256)
    model.train()
    report("deeplab train 256", timed(lambda: train_step(model, opt, x, lambda o: F.cross_entropy(o, y)), reps, device), device)
    model.eval()
    with torch.no_grad():
        report("deeplab forward 256", timed(lambda: model(x), reps, device), device)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", choices=["classify", "segment"], required=True)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    ap.add_argument("--sizes", default="128,224", help="classify input sizes")
    ap.add_argument("--arch", default="vgg16", choices=["vgg16", "efficientnet-lite0"], help="classify network")
    a = ap.parse_args()
    torch.manual_seed(0)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device = torch.device("cuda" if a.device.startswith("cuda") else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(
        json.dumps({"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads()}),
        flush=True,
    )
    if a.suite == "classify":
        classify(device, a.reps, [int(s) for s in a.sizes.split(",")], a.arch)
    else:
        segment(device, a.reps)


if __name__ == "__main__":
    main()
