"""Per-tile CPU latency of the tile classifier and detector, torch eager vs ONNX Runtime, one thread.

    .venv/bin/python benchmarks/bench_models.py [--sizes 320 384] [--batches 1 16] [--repeats 15]
    .venv/bin/python benchmarks/bench_models.py --train --sizes 320 --batches 16 --threads 2 --freeze 2

Also prints the bundle sizes (fp32 / fp16 weights, ONNX) and the effect of fp16 weight storage on the
outputs. Weights are random for the heads (speed does not depend on values). Numbers are medians; the
machine is shared, so expect +-30 %.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

from models.bundle import ModelBundle, load_bundle, save_bundle
from models.decode import decode_detections
from models.onnx import export_onnx
from models.predictor import load_predictor
from models.registry import build_model

ARCHS = {
    "classifier": ("tile_classifier", {"pretrained": "imagenet"}),
    "detector": ("tile_detector", {"pretrained": "imagenet", "num_subtypes": 16, "stride": 8}),
}


def median_ms(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds per call. On a shared machine the CPU time (one thread) is
    the steadier figure: it leaves out time spent waiting for a core."""
    fn()
    fn()  # warm-up: allocator and ORT arenas
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def gflops(model: torch.nn.Module, size: int) -> float:
    """Forward GFLOPs per tile: a load-independent cost figure for a shared machine."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def bench_training(size: int, batch: int, threads: int, freeze: int) -> None:
    """Seconds per optimiser step (forward + backward + Adam) of each model on random tiles."""
    from models.detector import detector_loss, encode_targets

    torch.set_num_threads(threads)
    x = torch.randn(batch, 3, size, size)
    boxes = [np.array([[40.0, 60.0, 120.0, 90.0]])] * batch
    targets = encode_targets(boxes, [[0]] * batch, [[1]] * batch, input_size=size, stride=8)
    print(f"\ntraining step, batch {batch}, {size} px, {threads} threads, freeze_stages={freeze}:")
    for task, (arch, kwargs) in ARCHS.items():
        model = build_model(arch, **{**kwargs, "freeze_stages": freeze}).train()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

        def step(model=model, opt=opt, task=task) -> None:
            out = model(x)
            if task == "classifier":
                loss = torch.nn.functional.binary_cross_entropy_with_logits(out, torch.zeros_like(out))
            else:
                loss = detector_loss(out, targets)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()

        wall, _ = median_ms(step, 3)
        rate = 60000 * batch / wall
        print(f"  {task}: {wall / 1000:.2f} s/step wall, {wall / batch:.0f} ms/tile ({rate:.0f} tiles/min)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 384])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--train", action="store_true", help="time training steps instead of inference")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for --train")
    parser.add_argument("--freeze", type=int, default=2, help="freeze_stages for --train")
    args = parser.parse_args()
    if args.train:
        bench_training(args.sizes[0], args.batches[-1], args.threads, args.freeze)
        return
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench-models-"))
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, cpus={os.cpu_count()}")
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    print(
        "| model | input | GFLOPs | batch | torch ms/tile wall (cpu) | ORT ms/tile wall (cpu) | cpu ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for task, (arch, kwargs) in ARCHS.items():
        torch.manual_seed(0)
        model = build_model(arch, **kwargs)
        bundle = ModelBundle(
            name=f"bench-{task}", task=task, arch=arch, arch_kwargs=kwargs, prep={"input_size": 320}
        )
        folder = save_bundle(bundle, model, root / task)
        export_onnx(folder)
        half = save_bundle(load_bundle(folder), model, root / f"{task}-fp16", half=True)
        sizes = {p.name: p.stat().st_size / 1e6 for p in folder.iterdir()}
        tp = load_predictor(folder, backend="torch", threads=1)
        op = load_predictor(folder, backend="onnx", threads=1)
        for size in args.sizes:
            flops = gflops(tp._runner, size)
            for batch in args.batches:
                x = np.random.default_rng(0).normal(0, 0.5, (batch, 3, size, size)).astype(np.float32)
                reps = max(3, args.repeats // max(1, batch // 4))
                tw, tc = (v / batch for v in median_ms(lambda x=x, tp=tp: tp.raw(x), reps))
                ow, oc = (v / batch for v in median_ms(lambda x=x, op=op: op.raw(x), reps))
                cells = f"{tw:.1f} ({tc:.1f}) | {ow:.1f} ({oc:.1f}) | {tc / oc:.1f}x"
                print(f"| {task} | {size} | {flops:.2f} | {batch} | {cells} |")
        if task == "detector":
            x = np.random.default_rng(0).normal(0, 0.5, (16, 3, 320, 320)).astype(np.float32)
            raw = op.raw(x)
            dw, dc = median_ms(lambda raw=raw: decode_detections(raw, 0.05, 100, input_size=320), 10)
            print(f"| detector numpy decode (top 100) | 320 | | 16 | {dw / 16:.2f} ({dc / 16:.2f}) | | |")
        hp = load_predictor(half, backend="torch", threads=1)
        x = np.random.default_rng(1).normal(0, 0.5, (16, 3, 320, 320)).astype(np.float32)
        diff = float(np.abs(hp.run(x) - tp.run(x)).max())
        print(
            f"\n{task}: files MB {', '.join(f'{k} {v:.1f}' for k, v in sorted(sizes.items()) if v > 0.01)}; "
            f"fp16 weights.pt {(half / 'weights.pt').stat().st_size / 1e6:.1f} MB, "
            f"max |prob diff| fp16 vs fp32 on 16 tiles: {diff:.1e}\n"
        )
    # fp16 storage on the real ImageNet head: how often does the top-1 class change?
    net = build_model("tile_classifier", pretrained="none", num_classes=1000).eval()
    from models.pretrained import efficientnet_pytorch_to_timm, imagenet_weights_path, read_state_dict

    sd = efficientnet_pytorch_to_timm(
        read_state_dict(imagenet_weights_path("tf_efficientnet_lite0")), "tf_efficientnet_lite0"
    )
    net.net.load_state_dict(sd)
    x = torch.from_numpy(np.random.default_rng(2).uniform(-1, 1, (32, 3, 224, 224)).astype(np.float32))
    x = torch.nn.functional.avg_pool2d(x, 9, 1, 4)  # smoother than white noise, closer to photos
    with torch.no_grad():
        p32 = net(x).softmax(1)
        net.net.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in sd.items()})
        p16 = net(x).softmax(1)
    agree = float((p32.argmax(1) == p16.argmax(1)).float().mean())
    print(
        f"ImageNet head, 32 smoothed-noise images: fp16 top-1 agreement {agree:.2f}, "
        f"max |prob diff| {float((p32 - p16).abs().max()):.1e}"
    )


if __name__ == "__main__":
    main()
