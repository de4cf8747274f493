"""Near-duplicate search at scale: shotcap's partitioned self-join against exact numpy brute force.

Data: N x D float32 unit vectors shaped like real embeddings (a few thousand topic clusters, same-topic
cosine around 0.5) plus planted near-duplicate groups (2-5 copies, pairwise cosine about 0.86-0.99).
Both methods run in their own child process on the same seeded data, so wall time and peak memory
(VmHWM from the data's creation on, data included) are measured separately in this one run.

Brute force is exact but quadratic: it answers the sampled rows against all N rows in chunks and its
full-N time is extrapolated from the sample (stated in the output). Recall and precision are over the
pairs that touch a sampled row; precision also checks every reported pair's true similarity.

Timing: one run per method by default (the million takes minutes); --repeats N runs both N times, alternating
(the order reversed every other repeat), and prints wall time, peak memory and the speed-up as the median and
spread (min-max) over the repeats. Recall and precision are exact counts on seeded data, the same every run:
they come from the first repeat.

    python bench/dedup.py                 # 1,000,000 x 512, one run each (a few minutes)
    python bench/dedup.py --repeats 3     # the same with a spread for the timings
    python bench/dedup.py --n 100000      # quicker try
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import time

# FAISS's OpenMP threads spin while waiting; on a machine shared with other jobs that stalls k-means
# several-fold. Passive waiting (set before faiss loads) is the sane setting there; override it if you like.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from _stats import interleave, load_average, per_repeat, repeats_note, spread  # noqa: E402
from index.dedup.groups import near_duplicate_pairs  # noqa: E402

CLUSTERS = 4000


def make_data(n: int, dim: int, seed: int, dup_fraction: float = 0.05) -> np.ndarray:
    """Clustered unit vectors with planted near-duplicate groups, generated in place in chunks."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, dim), np.float32)
    step = 20_000
    for a in range(0, n, step):
        b = min(n, a + step)
        c = rng.integers(0, CLUSTERS, b - a)
        noise = rng.standard_normal((b - a, dim)).astype(np.float32) / np.sqrt(dim)
        v = centres[c] + noise
        x[a:b] = v / np.linalg.norm(v, axis=1, keepdims=True)
    # planted groups: copies of a source row with small noise, written over random other rows
    count = int(n * dup_fraction)
    rows = rng.permutation(n)[:count]
    pos = 0
    while pos < count - 1:
        g = int(min(rng.integers(2, 6), count - pos))
        src, copies = rows[pos], rows[pos + 1:pos + g]
        for r in copies:
            eps = float(rng.uniform(0.1, 0.35))
            v = x[src] + eps * rng.standard_normal(dim).astype(np.float32) / np.sqrt(dim)
            x[r] = v / np.linalg.norm(v)
        pos += g
    return x


def brute_force(x: np.ndarray, rows: np.ndarray, threshold: float, chunk: int = 16384) -> set:
    pairs = set()
    q = x[rows]
    for a in range(0, len(x), chunk):
        sims = q @ x[a:a + chunk].T
        qi, j = np.nonzero(sims >= threshold)
        for r, c in zip(rows[qi].tolist(), (j + a).tolist()):
            if r != c:
                pairs.add((min(r, c), max(r, c)))
    return pairs


def _peak_gib(reset: bool = False) -> float:
    """Peak resident memory of this process (VmHWM); `reset` restarts the count (Linux >= 4.0)."""
    if reset:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _child(which: str, args, out):
    x = make_data(args.n, args.dim, args.seed)
    base = _peak_gib(reset=True)
    rows = np.sort(np.random.default_rng(args.seed + 1).choice(args.n, args.sample, replace=False))
    t0 = time.perf_counter()
    if which == "brute":
        result = brute_force(x, rows, args.threshold)
    else:
        i, j, s, params = near_duplicate_pairs(x, args.threshold, method="partitioned", probe=args.probe)
        result = (i, j, s, params)
    wall = time.perf_counter() - t0
    peak = _peak_gib()
    if which == "ours":  # the check of reported similarities happens after timing
        i, j, s, params = result
        true_s = np.einsum("ij,ij->i", x[i], x[j]) if len(i) else np.zeros(0)
        sample = set(rows.tolist())
        touching = {(int(a), int(b)) for a, b in zip(i, j) if a in sample or b in sample}
        result = {"pairs": touching, "all": len(i), "bad": int((true_s < args.threshold - 1e-5).sum()),
                  "params": params}
    out.put((which, wall, peak, base, result))


def run(which: str, args):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(which, args, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="rows")
    ap.add_argument("--dim", type=int, default=512, help="embedding width")
    ap.add_argument("--sample", type=int, default=5000, help="rows the brute force answers")
    ap.add_argument("--threshold", type=float, default=0.9, help="cosine similarity of a near-duplicate pair")
    ap.add_argument("--probe", type=int, default=4, help="partitions each row is searched in")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per method, alternating (1: no spread)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")

    runs = interleave(args.repeats, {"ours": lambda: run("ours", args), "brute": lambda: run("brute", args)})
    (_, _, _, base, ours), (_, _, _, _, truth) = runs["ours"][0], runs["brute"][0]
    t_ours = spread(r[1] for r in runs["ours"])
    t_bf = spread(r[1] for r in runs["brute"])
    peak_ours, peak_bf = spread(r[2] for r in runs["ours"]), spread(r[2] for r in runs["brute"])
    t_bf_full = spread(t * args.n / args.sample for t in t_bf.values)
    speedup = per_repeat(t_bf_full.values, t_ours.values)
    found = ours["pairs"]
    tp = len(found & truth)
    recall = tp / max(1, len(truth))
    precision = tp / max(1, len(found))
    # a found pair with both rows outside... cannot be checked by the sample; all pairs' true sims are checked
    precision_all = 1 - ours["bad"] / max(1, ours["all"])
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, {load_average()} at the end")
    print(f"data: {args.n} x {args.dim} float32 ({args.n * args.dim * 4 / 2**30:.2f} GiB), threshold "
          f"{args.threshold}, sample {args.sample} rows; timings: {repeats_note(args.repeats)}")
    print(f"partitioned join: {ours['all']} pairs, params {ours['params']}")
    print(f"  wall {t_ours.text('{:.1f}', ' s')}   peak RSS {peak_ours.text('{:.2f}', ' GiB')} "
          f"(at the start, data included: {base:.2f} GiB)")
    print(f"brute force (numpy, chunked): {len(truth)} true pairs touching the sample")
    print(f"  wall {t_bf.text('{:.1f}', ' s')} for {args.sample} rows -> {t_bf_full.text('{:.0f}', ' s')} "
          f"extrapolated to all {args.n} rows   peak RSS {peak_bf.text('{:.2f}', ' GiB')}")
    print(f"recall {recall:.4f}   precision {precision:.4f} (sample)   {precision_all:.4f} (all reported pairs)")
    print(f"speed-up vs brute force {speedup.text('{:.1f}', 'x')}")
    ok = recall >= 0.99 and precision >= 0.99 and speedup.median > 1 and peak_ours.median < 4.0
    print("targets (recall, precision >= 0.99, faster, < 4 GiB):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
