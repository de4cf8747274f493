"""Shot-boundary accuracy and speed of every splitter detector, against PySceneDetect's AdaptiveDetector
with its library defaults (`scenedetect.detect(path, AdaptiveDetector())`, its own OpenCV decode) in the
same run.

    python bench/splitter.py [--synthetic 6] [--seconds 12] [--size 320x180] [--realdata .realdata]
                             [--detectors ...] [--repeats 3]

Ground truth: synthetic videos from `index.synth` (hard cuts, fades, dissolves, fast motion with no cut;
exact frames) and the real clips of ../shared/realdata (fetched with its fetch.sh; cuts in cuts.json).
A predicted boundary matches a hard cut within 0.1 s and a gradual transition within 0.7 s of its
centre (one-to-one, nearest first). Wall time is the whole per-file call, decode included; model
loading is timed apart. Prints a markdown table; the machine load average is printed with it because
other processes on a shared machine slow every row.

Below the table, the TransNetV2 rows are split into the decode at 48x27 (timed alone on the same files)
and the network: its cost per frame that goes through it, and how many frames it could see at that cost
if TransNetV2 were to take no longer than the baseline (a bound on any scheme that skips frames).

Timing: every detector, the baseline and the decode alone run over every file --repeats times (default 3),
file by file with every detector in turn, the detectors' order reversed on every other repeat, so a change
of the machine's load hits all rows alike. Wall times are the median and spread (min-max) over the repeats;
a ratio is taken per repeat (a detector's time over the baseline's in the same repeat) and printed as its
median and spread. Accuracy comes from the first repeat (the detectors are deterministic; a detector whose
boundaries differed in a later repeat is named under the table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _stats import load_average, per_repeat, repeats_note, spread  # noqa: E402
from index import synth  # noqa: E402
from index.video import iter_frames  # noqa: E402
from splitter.detectors import DETECTORS, make_detector  # noqa: E402
from splitter.transnetv2 import PAD, SIZE  # noqa: E402

HARD_TOL, GRADUAL_TOL = 0.1, 0.7


def predicted_boundaries(shots) -> list[float]:
    """One time per boundary: the next shot's start at a hard cut, the gap's centre at a transition."""
    out = []
    for a, b in zip(shots, shots[1:]):
        out.append(b.start_sec if a.end_frame == b.start_frame else (a.end_sec + b.start_sec) / 2)
    return out


def match(truth: list[tuple[str, float]], pred: list[float]) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives), one-to-one, closest pairs first."""
    pairs = sorted((abs(t - p), i, j) for i, (kind, t) in enumerate(truth) for j, p in enumerate(pred)
                   if abs(t - p) <= (HARD_TOL if kind == "hard" else GRADUAL_TOL) + 1e-9)
    used_t, used_p = set(), set()
    for _, i, j in pairs:
        if i not in used_t and j not in used_p:
            used_t.add(i)
            used_p.add(j)
    tp = len(used_t)
    return tp, len(pred) - tp, len(truth) - tp


def f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def dataset(args, tmp: Path) -> list[tuple[str, Path, list[tuple[str, float]]]]:
    items = []
    truths = synth.make_sample_videos(tmp, count=args.synthetic, seconds=args.seconds, size=args.size)
    for name, truth in sorted(truths.items()):
        items.append(("synthetic", tmp / name, truth.boundaries()))
    real = Path(args.realdata)
    cuts_file = real / "cuts.json"
    if not cuts_file.exists():
        cuts_file = ROOT.parent / "shared" / "realdata" / "cuts.json"
    if real.is_dir() and cuts_file.exists():
        cuts = json.loads(cuts_file.read_text())
        for name, c in cuts.items():
            if not name.startswith("_") and (real / name).exists():
                b = [("hard", t) for t in c["hard"]] + [("gradual", t) for t in c.get("gradual", [])]
                items.append(("real", real / name, sorted(b, key=lambda x: x[1])))
    return items


def baseline(path) -> list[float]:
    from scenedetect import AdaptiveDetector, detect

    scenes = detect(str(path), AdaptiveDetector())
    return [s[0].seconds for s in scenes[1:]]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--synthetic", type=int, default=6, help="number of synthetic videos")
    ap.add_argument("--seconds", type=float, default=12.0, help="length of each synthetic video")
    ap.add_argument("--size", default="320x180", type=lambda v: tuple(int(x) for x in v.split("x")),
                    help="synthetic video size WxH (1280x720: HD sources, where decoding weighs more)")
    ap.add_argument("--realdata", default=os.environ.get("SHOTCAP_REALDATA") or str(ROOT / ".realdata"),
                    help="folder of real clips with cuts.json (left out when missing)")
    ap.add_argument("--detectors", nargs="*", default=["transnetv2", "transnetv2:precision=fp32",
                                                       *[d for d in DETECTORS if d != "transnetv2"]],
                    help="names, optionally with options: transnetv2:precision=fp32,threads=1")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes over every file; median and spread printed")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        items = dataset(args, Path(tmp))
        steps = {}
        runners = {"PySceneDetect AdaptiveDetector (library defaults, baseline)": (baseline, 0.0)}
        baseline(items[0][1])  # warm the library imports
        for spec in args.detectors:
            name, _, opts = spec.partition(":")
            options = dict(kv.split("=", 1) for kv in opts.split(",") if kv)
            options = {k: json.loads(v) if v[:1].isdigit() else v for k, v in options.items()}
            t = time.perf_counter()
            det = make_detector(name, **options)
            if isinstance(getattr(type(det), "model", None), property):
                _ = det.model  # a network loads on first use: load it here, timed as the model load
            load = time.perf_counter() - t
            det.detect(items[0][1])  # warm-up (first-call allocations), not timed
            label = f"shotcap `{name}`" + (f" ({opts})" if opts else "")
            if name == "transnetv2":
                label += f" [{det.precision}]"
                steps[label] = det.step
            runners[label] = (lambda path, det=det: predicted_boundaries(det.detect(path)[0]), load)
        rows = {label: dict(times=[0.0] * args.repeats, load=load, synthetic=[0, 0, 0], real=[0, 0, 0],
                            all=[0, 0, 0]) for label, (_, load) in runners.items()}
        decode, counts = [0.0] * args.repeats, []  # decode alone at TransNetV2's 48x27: no network speed-up removes it
        first, changed = {}, set()
        order = list(runners)
        for rep in range(args.repeats):
            # file by file, every detector in turn (reversed every other repeat): a load change hits all rows alike
            for kind, path, truth in items:
                for label in (order if rep % 2 == 0 else order[::-1]):
                    t = time.perf_counter()
                    pred = runners[label][0](path)
                    rows[label]["times"][rep] += time.perf_counter() - t
                    if rep == 0:
                        first[label, path] = pred
                        v = match(truth, pred)
                        for k in (kind, "all"):
                            rows[label][k] = [a + b for a, b in zip(rows[label][k], v)]
                    elif pred != first[label, path]:
                        changed.add(label)
                t = time.perf_counter()
                n = sum(1 for _ in iter_frames(path, size=SIZE))
                decode[rep] += time.perf_counter() - t
                if rep == 0:
                    counts.append(n)
    n_syn = sum(1 for k, *_ in items if k == "synthetic")
    n_real = len(items) - n_syn
    print(f"\n{n_syn} synthetic videos ({args.seconds:g} s, {args.size[0]}x{args.size[1]}, cuts/fades/dissolves/"
          f"fast motion) + {n_real} real clips; torch threads {torch.get_num_threads()}, {load_average()} "
          f"(at the start {load0[0]:.2f})")
    print(f"wall s and ratio: {repeats_note(args.repeats)}\n")
    print("| detector | F1 synthetic | F1 real | P / R / F1 all | wall s | ratio vs baseline | model load s |")
    print("|---|---|---|---|---|---|---|")
    base = rows[next(iter(rows))]["times"]
    for name, r in rows.items():
        fs, fr, fa = f1(*r["synthetic"])[2], f1(*r["real"])[2], f1(*r["all"])
        print(f"| {name} | {fs:.3f} | {fr:.3f} | {fa[0]:.3f} / {fa[1]:.3f} / {fa[2]:.3f} | "
              f"{spread(r['times']).text()} | {per_repeat(r['times'], base).text()} | {r['load']:.2f} |")
    if changed:
        print(f"\nboundaries differed between repeats (accuracy above is the first repeat's): "
              f"{', '.join(sorted(changed))}")
    boundaries, frames = sum(len(truth) for *_, truth in items), sum(counts)
    print(f"\nDecode alone at {SIZE[0]}x{SIZE[1]} (no detection): {spread(decode).text()} s for {frames} frames, "
          f"{boundaries} true boundaries.")
    for name, step in steps.items():  # windows of step + 2 * PAD frames keep their middle `step`
        through = sum(-(-n // step) * (step + 2 * PAD) for n in counts)
        per_pass = spread((t - d) / through * 1e3 for t, d in zip(rows[name]["times"], decode))
        affordable = max(0.0, spread(base).median - spread(decode).median) / (per_pass.median / 1e3)
        print(f"{name}: {per_pass.text()} ms per frame through the network ({through / frames:.2f} per "
              f"decoded frame); "
              f"to tie the baseline it could see {affordable:.0f} of the {frames} frames once "
              f"({affordable / max(boundaries, 1):.1f} per true boundary).")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
