"""Console scripts: `index-clips`, `search-clips`.

INDEX_DIR (written by index-clips, grows with every manifest added):
  clips.parquet          every indexed clip (all manifests added, in order) + dup_group, keep, x_batch
  visual.npy, text.npy   embeddings, row-aligned with clips.parquet
  visual.faiss, text.faiss (+ .json parameters, .ids.parquet row -> clip_id)
  pairs.parquet          near-duplicate pairs (clip_id_a, clip_id_b, similarity)
  similarity.npz, similarity_hist.png   nearest-neighbour similarity histogram (choosing the threshold)
  index.json             models, batches (manifests added), dedup parameters and counts
  failed.jsonl           sources that could not be embedded
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import PurePosixPath

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from . import faiss_index
from . import groups as dd
from .embed import TextEmbedder, frame_hash, make_visual_embedder
from .. import query, storage
from ..engine import (BadInput, EngineOptions, Output, Stage, Unit, UsageError, add_engine_args, options_from_args,
                      run_stage)
from ..files import HashCache, OutputLock, command_line, file_sha256, remove_own_temps
from ..manifest import (ManifestError, PartStore, add_retry_arg, manifest_files, manifest_folder, read_manifest,
                        run_cli, write_failed, write_manifest, write_provenance)
from ..parts import _source
from ..video import iter_frames, sample_indices

STAGE = "embed"


# ---------------------------------------------------------------- index-clips

def _batch(index_dir, manifest_path) -> tuple[int, list]:
    """The batch number of this manifest: its earlier number on a re-run, else the next one."""
    meta_path = index_dir / "index.json"
    batches = json.loads(storage.read_text(meta_path)).get("batches", []) if storage.exists(meta_path) else []
    files = [manifest_path] if storage.is_file(manifest_path) else manifest_files(manifest_path)
    digest = file_sha256(files[0])[:16] if len(files) == 1 else hashlib.sha256(
        "".join(file_sha256(f) for f in files).encode()).hexdigest()[:16]
    for b in batches:
        if b["sha256"] == digest:
            return b["batch"], batches
    batches.append({"batch": len(batches), "manifest": manifest_path.name, "sha256": digest})
    return len(batches) - 1, batches


def read_clips(path, requests: dict, size) -> tuple[dict, int]:
    """Like `read_many` (one sequential decode), but a clip whose frames run past the end of the video is
    left out instead of failing the whole source: ({key: frames} for complete clips, frames decoded)."""
    wanted: dict[int, list] = {}
    for key, idxs in requests.items():
        for pos, i in enumerate(idxs):
            wanted.setdefault(int(i), []).append((key, pos))
    out = {k: [None] * len(v) for k, v in requests.items()}
    seen = 0
    for fr in iter_frames(path, size=size, stop=max(wanted, default=-1) + 1, want=wanted):
        seen = fr.index + 1
        for key, pos in wanted.get(fr.index, ()):
            out[key][pos] = fr.image
    return {k: np.stack(v) for k, v in out.items() if v and all(f is not None for f in v)}, seen


class EmbedStage(Stage):
    """index-clips' units: one source's clips of this manifest that the index does not hold yet (a unit's key
    covers its clip set: a larger manifest later embeds only the new clips); `process` decodes the source once
    and embeds its clips. The driver loads its own embedders only when it needs them (captions to re-embed, the
    units run here); workers load theirs once. `con` holds the manifest as `input` (`index.query.Input`)."""

    name = STAGE
    unit_name = "clips"
    uses_gpu = True
    driver_only = ("con", "store", "_models")

    def __init__(self, con, store: PartStore, batch: int, image_model, text_model, num_frames: int,
                 trust_remote_code: bool):
        self.con, self.store, self.batch = con, store, batch
        self.spec = (image_model, text_model, num_frames, trust_remote_code)
        self._models = None
        self.refreshed = 0  # batches rewritten because their clips' captions changed

    def models(self) -> tuple:
        if getattr(self, "_models", None) is None:  # a worker gets the stage without the driver's models
            image_model, text_model, num_frames, trust = self.spec
            self._models = (make_visual_embedder(image_model, num_frames=num_frames, trust_remote_code=trust),
                            TextEmbedder(text_model))
        return self._models

    def units(self):
        self._refresh_captions()
        return query.clip_set_units(self.con, self.store)

    def load(self):
        return self.models()

    def process(self, models, unit: Unit) -> Output:
        visual, text = models
        rows = pd.DataFrame(unit.data)
        first = rows.iloc[0]
        size = visual.frame_size(int(first["width"]), int(first["height"]))
        requests = {cid: sample_indices(a, b, visual.num_frames)
                    for cid, a, b in zip(rows["clip_id"], rows["start_frame"], rows["end_frame"])}
        frames, total = read_clips(unit.path, requests, size)
        if not frames:
            raise BadInput(f"{len(rows)} clips: no clip's frames lie within the {total} decodable frames")
        bad = [(cid, f"frame range runs past the {total} decodable frames") for cid in rows["clip_id"]
               if cid not in frames]
        rows = rows[rows["clip_id"].isin(frames)]
        clips = [frames[c] for c in rows["clip_id"]]
        part = rows.copy()
        part["x_batch"] = self.batch
        part["x_frame_hash"] = [frame_hash(c) for c in clips]
        part["x_visual"] = list(visual.embed(clips))
        part["x_text"] = list(text.embed(rows["caption"].tolist() if "caption" in rows else [None] * len(rows)))
        return Output(part, bad)

    def merge(self, store: PartStore):
        df, fails = store.merge(sort_by=("x_batch", "video_path", "start_frame", "clip_id"))
        return df.drop_duplicates("clip_id", keep="first").reset_index(drop=True), fails  # the earliest batch

    def _refresh_captions(self) -> None:
        """Batches whose clips have other captions in this manifest (captioned after indexing): the later stages'
        columns come from this manifest and the text vectors are embedded again (the batch is rewritten whole,
        atomically, under its own name)."""
        con = self.con
        if "caption" not in query.names_of(con, "SELECT * FROM input"):
            return
        for path in self.store.files():
            src = query.files_sql(con, [path])
            changed = query.scalar(con, f"SELECT count(*) FROM {src} p JOIN input i USING (clip_id) WHERE "
                                        "coalesce(CAST(p.caption AS VARCHAR), '') <> coalesce(i.caption, '')"
                                   if "caption" in query.names_of(con, f"SELECT * FROM {src}") else
                                   f"SELECT count(*) FROM {src} p JOIN input i USING (clip_id) "
                                   "WHERE coalesce(i.caption, '') <> ''")
            if not changed:
                continue
            part = pq.read_table(_source(path)).to_pandas()
            new = con.execute(f"SELECT * EXCLUDE (_row) FROM input WHERE clip_id IN "
                              f"(SELECT clip_id FROM {src})").df().set_index("clip_id")
            here = part["clip_id"].isin(new.index).to_numpy()
            ids = part.loc[here, "clip_id"]
            for col in new.columns:
                if col not in ("video_path", "video_sha256"):
                    values = part[col].astype(object) if col in part else pd.Series([None] * len(part), dtype=object)
                    values[here] = new.loc[ids, col].to_numpy()
                    part[col] = values
            part["x_text"] = list(self.models()[1].embed(part["caption"].tolist()))
            self.store.rewrite(path.name, part)
            self.refreshed += 1


def _texts(s: pd.Series) -> list[str]:
    return ["" if v is None or (isinstance(v, float) and v != v) else str(v) for v in s]


def build_index(manifest_path, index_dir, image_model=None, text_model=None, num_frames: int = 8,
                threshold: float = dd.DEFAULT_THRESHOLD, method: str = "auto", index_kind: str = "auto",
                trust_remote_code: bool = False, engine: EngineOptions | None = None,
                retry_failed: bool = False, rehash: bool = False) -> dict:
    """index-clips as a function: embed, update the FAISS indexes, dedup everything indexed. Returns index.json.
    A re-run with nothing new (same parts, failures and options) leaves the index as it is and loads no model."""
    manifest_path, index_dir = storage.location(manifest_path), storage.location(index_dir)
    storage.check_store(manifest_path, "input")
    storage.check_store(index_dir, "output")
    if not 0 < threshold <= 1:  # (and not NaN)
        raise UsageError(f"--threshold is a cosine similarity: a number above 0 and at most 1, got {threshold}")
    if num_frames < 1:
        raise UsageError(f"--frames must be at least 1, got {num_frames}")
    with query.connect() as con:
        inp = query.Input(con, manifest_path, STAGE)
        with OutputLock(index_dir, command_line(), "index-clips"):
            remove_own_temps(index_dir)  # an interrupted atomic write of ours leaves nothing behind
            batch, batches = _batch(index_dir, manifest_path)
            with HashCache(index_dir, also=[manifest_folder(manifest_path)], rehash=rehash) as hashes:
                source_failures = query.check_sources(inp, hashes, STAGE)
            config = {"visual": {"model": image_model or "signature", "num_frames": int(num_frames)},
                      "text": {"model": text_model or "bundled"}}
            store = PartStore(index_dir, STAGE, config=config, retry_failed=retry_failed)
            stage = EmbedStage(con, store, batch, image_model, text_model, num_frames, trust_remote_code)
            run_stage(stage, store, engine)
            failures = inp.failures + source_failures
            state = _state(store, failures, batches, threshold, method, index_kind)
            meta_path = index_dir / "index.json"
            if storage.exists(meta_path):
                meta = json.loads(storage.read_text(meta_path))
                if meta.get("state") == state and storage.exists(index_dir / "clips.parquet"):
                    return meta  # nothing changed since the index was written
            visual, text = stage.models()
            meta = _finish_index(stage, manifest_path, index_dir, visual, text, batches, threshold, method,
                                 index_kind, failures)
            storage.write_text(meta_path, json.dumps({**meta, "state": state}, indent=2, default=str))
            write_provenance(index_dir, STAGE, {**config, "threshold": threshold, "method": method},
                             source=manifest_path)
            return meta


def _state(store: PartStore, failures: list, batches: list, *params) -> str:
    """A digest of what the index is made from: the batches on disk (names, sizes, times), the input's failures,
    the manifests added and the dedup and index parameters."""
    text = json.dumps([store.state(listed=True), failures, batches, params], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _finish_index(stage, manifest_path, index_dir, visual, text, batches, threshold, method, index_kind,
                  input_failures) -> dict:
    rows, failures = stage.merge(stage.store)
    failures = sorted(input_failures + failures, key=lambda r: (r["path"], r["reason"]))
    write_failed(index_dir, failures)
    if not len(rows):
        raise ManifestError(f"{manifest_path}: no clip could be embedded (see {index_dir / 'failed.jsonl'})")
    vis = np.stack(rows.pop("x_visual").to_numpy()).astype(np.float32)
    txt = np.stack(rows.pop("x_text").to_numpy()).astype(np.float32)
    ids = rows["clip_id"].astype(str).tolist()
    _save_npy(index_dir / "visual.npy", vis)
    _save_npy(index_dir / "text.npy", txt)
    vindex = faiss_index.update(index_dir, "visual", vis, ids, index_kind)
    tindex = faiss_index.update(index_dir, "text", txt, ids, index_kind)

    i, j, s, params = dd.near_duplicate_pairs(vis, threshold, method=method)
    rows = rows.drop(columns=[c for c in ("dup_group", "keep") if c in rows])
    group, keep = dd.assign_groups(rows.rename(columns={"x_batch": "batch"}), i, j, rows["x_frame_hash"])
    rows["dup_group"], rows["keep"] = group, keep
    write_manifest(rows, index_dir / "clips.parquet")
    pairs = pd.DataFrame({"clip_id_a": np.asarray(ids)[i], "clip_id_b": np.asarray(ids)[j], "similarity": s})
    storage.write_bytes(index_dir / "pairs.parquet", pairs.to_parquet(index=False))
    nn = dd.nearest_neighbour_similarity(vis)
    _save_histogram(index_dir, nn, params.threshold)

    batch_of = rows.groupby("dup_group")["x_batch"].nunique()
    meta = {
        "clips": len(rows), "batches": batches, "visual": visual.describe(), "text": text.describe(),
        "visual_index": vindex.params.__dict__, "text_index": tindex.params.__dict__,
        "dedup": {**dd.params_dict(params), "keep_rule": dd.KEEP_RULE, "pairs": int(len(i)),
                  "groups": int(rows.loc[rows["dup_group"] >= 0, "dup_group"].nunique()),
                  "exact_duplicates": int(rows.duplicated("x_frame_hash").sum()),
                  "dropped": int((~rows["keep"]).sum()),
                  "cross_batch_groups": int((batch_of.drop(-1, errors="ignore") > 1).sum())},
        "failed": len(failures),
    }
    storage.write_text(index_dir / "index.json", json.dumps(meta, indent=2, default=str))
    return meta


def _save_npy(path, x: np.ndarray) -> None:
    import io
    buf = io.BytesIO()
    np.save(buf, x)
    storage.write_bytes(path, buf.getvalue())


def _save_histogram(index_dir, nn: np.ndarray, threshold: float) -> None:
    import io
    bins = np.linspace(-1, 1, 81)
    counts, _ = np.histogram(nn, bins=bins)
    buf = io.BytesIO()
    np.savez(buf, nearest=nn, bins=bins, counts=counts, threshold=threshold)
    storage.write_bytes(index_dir / "similarity.npz", buf.getvalue())
    from ..shards.card import similarity_plot
    storage.write_bytes(index_dir / "similarity_hist.png", similarity_plot(nn, threshold))


def index_main(argv=None) -> int:
    return run_cli("index-clips", _index_main, argv)


def _index_main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="index-clips", description="Embed clips, build FAISS indexes, find duplicates.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("manifest", help="clips.parquet (or .jsonl/.csv) from split-videos / caption-videos")
    ap.add_argument("-o", "--out", required=True, help="INDEX_DIR (created, or an existing index to add to)")
    ap.add_argument("--image-model", default=None,
                    help="CLIP/SigLIP model id or folder (default: the compact frame signature, no weights)")
    ap.add_argument("--text-model", default=None, help="sentence-transformers model (default: bundled MiniLM)")
    ap.add_argument("--frames", type=int, default=8, help="frames sampled per clip")
    ap.add_argument("--threshold", type=float, default=dd.DEFAULT_THRESHOLD,
                    help="cosine similarity at or above which two clips are near duplicates")
    ap.add_argument("--method", choices=["auto", "exact", "partitioned"], default="auto",
                    help="pair search: exact up to 20,000 clips, partitioned (FAISS k-means cells) above")
    ap.add_argument("--index-type", "--index-kind", dest="index_kind", choices=list(faiss_index.KINDS),
                    default="auto", help="FAISS index for search: auto = exact flat up to 1,000,000 clips, IVF-PQ "
                    "(72 B per 512-d vector, re-ranked by exact cosine from visual.npy/text.npy) above")
    ap.add_argument("--trust-remote-code", action="store_true", help="allow models that run their own code")
    ap.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    ap.add_argument("--rehash", action="store_true",
                    help="hash every source again instead of trusting the cached hashes of unchanged files")
    add_retry_arg(ap)
    add_engine_args(ap, "source videos")
    args = ap.parse_args(argv)
    try:
        meta = build_index(args.manifest, args.out, args.image_model, args.text_model, args.frames,
                           args.threshold, args.method, args.index_kind, args.trust_remote_code,
                           engine=options_from_args(args, not args.quiet), retry_failed=args.retry_failed,
                           rehash=args.rehash)
    except UsageError as e:
        return _error(e, "index-clips")
    d = meta["dedup"]
    print(f"indexed {meta['clips']} clips ({len(meta['batches'])} manifests) in {storage.location(args.out)}: "
          f"{d['groups']} duplicate groups, {d['dropped']} clips marked keep=False "
          f"({d['cross_batch_groups']} groups across manifests), threshold {d['threshold']}, "
          f"{meta['failed']} failures (failed.jsonl)", file=sys.stderr)
    return 0


def _error(e: BaseException, prog: str) -> int:
    """One plain line on stderr (no wrapping), exit status 2."""
    print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2


# ---------------------------------------------------------------- search-clips

def search(index_dir, text: str | None = None, like: str | None = None, k: int = 10,
           text_model: str | None = None) -> pd.DataFrame:
    index_dir = storage.location(index_dir)
    clips = read_manifest(index_dir / "clips.parquet") if storage.exists(index_dir / "clips.parquet") else None
    if clips is None:
        raise UsageError(f"{index_dir}: not an index folder; run index-clips first")
    if k < 1:
        raise UsageError(f"-k must be at least 1, got {k}")
    if text is not None and not text.strip():
        raise UsageError("--text is empty: give the words to look for")
    if text is not None:
        vi = faiss_index.VectorIndex.load(index_dir, "text")
        meta = json.loads(storage.read_text(index_dir / "index.json"))
        model = text_model or (None if "bundled" in meta["text"]["name"] else meta["text"]["name"])
        hits = vi.search(TextEmbedder(model).embed([text]), k)[0]
    else:
        vi = faiss_index.VectorIndex.load(index_dir, "visual")
        hits = [h for h in vi.search(vi.vector(like), k + 1)[0] if h[0] != like][:k]
    info = clips.drop_duplicates("clip_id").set_index("clip_id")
    cols = [c for c in ("video_path", "start_sec", "end_sec", "caption", "dup_group", "keep") if c in info]
    out = pd.DataFrame(hits, columns=["clip_id", "score"])
    return out.join(info[cols], on="clip_id")


def search_main(argv=None) -> int:
    return run_cli("search-clips", _search_main, argv)


def _search_main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="search-clips", description="Nearest clips to a text or to a clip.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("index_dir", help="INDEX_DIR written by index-clips")
    q = ap.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="find clips whose captions match this text")
    q.add_argument("--like", metavar="CLIP_ID", help="find clips that look like this clip (a clip_id)")
    ap.add_argument("-k", type=int, default=10, help="how many clips to show")
    ap.add_argument("--text-model", default=None,
                    help="sentence-transformers model for --text (default: the one the index was built with)")
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table
    console = Console()
    try:
        hits = search(args.index_dir, args.text, args.like, args.k, args.text_model)
    except UsageError as e:
        return _error(e, "search-clips")
    table = Table("score", "video", "time", "caption")
    table.add_column("clip_id", no_wrap=True, min_width=20)  # whole, to paste into --like
    for r in hits.itertuples():
        cap = str(getattr(r, "caption", "") or "")
        table.add_row(f"{r.score:.3f}", PurePosixPath(str(r.video_path)).name, f"{r.start_sec:.2f}-{r.end_sec:.2f}s",
                      cap[:80] + ("..." if len(cap) > 80 else ""), r.clip_id)
    console.print(table)
    return 0



if __name__ == "__main__":
    sys.exit(index_main())
