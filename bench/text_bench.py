"""What the text encoder buys: test AUC for text off / frozen / contrastive (/ joint), seen vs unseen queries.

One generated log with long-tail text (`generate(long_tail=...)`: reworded titles, fresh reworded queries every
day). Days are copied into a lake (no ingest/validate: this bench measures features and models, not the data
gate). For each variant the features of the last day are built (train window `--train-days`, 1 valid day, the
last `--test-days` days are the test window: the days after the run) and the MTL model trains; AUC is on the
test window, for search ctr, overall ctr and cart, and for search ctr split into rows whose query string occurs
in the train window ("seen") and rows whose query does not ("unseen"). Also: the contrastive fine-tune's wall
time, pairs and held-out recall@k, and embedding titles/s of the frozen encoder on this machine.

    .venv/bin/python bench/text_bench.py                        # the size of the report (2 CPU cores)
    .venv/bin/python bench/text_bench.py --days 6 --train-days 3 --impressions-per-day 20000 --users 2000 \
        --pairs 1500 --probe text.finetune=contrastive --probe text.finetune=contrastive,text.finetune_lr=1e-4
                                                  # fine-tune settings by the cosine alone (no models trained)
    .venv/bin/python bench/text_bench.py --variants off,frozen,contrastive,joint   # joint: meant for a GPU

Prints one JSON line per variant, then a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    "off": ["text.enabled=false"],
    "frozen": [],
    "contrastive": ["text.finetune=contrastive"],
    "joint": ["text.finetune=joint"],
}


def _lake(landing: Path, home: Path, first_day: str) -> None:
    from pipeline.paths import Layout

    lay = Layout.of(home)
    for day in sorted((landing / "impressions").glob("dt=*")):
        shutil.copytree(day, lay.impressions_dir(day.name[3:]))
    for name in ("users", "items"):
        lay.snapshot(name, first_day).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(landing / f"{name}.parquet", lay.snapshot(name, first_day))


def _aucs(run_dir: Path, model_dir: str, seen_queries: set[int]) -> dict[str, float]:
    import polars as pl

    from pipeline.evaluation.metrics import auc
    from pipeline.features import dataset
    from pipeline.training.train import load_trained, predict

    model, meta = load_trained(model_dir)
    tasks = tuple(meta["tasks"])
    test = dataset.load_split(run_dir, "test", tasks)
    p = predict(model, test)
    frame = pl.read_parquet(run_dir / "features" / "test.parquet")
    y_click, y_cart = frame["clicked"].to_numpy(), frame["carted"].to_numpy()
    p_ctr, p_cart = p[:, tasks.index("ctr")], p[:, tasks.index("cart")]
    search = (frame["surface"] == "search").to_numpy()
    q = frame["text__query"].to_numpy() if "text__query" in frame.columns else None
    out = {"ctr": auc(y_click, p_ctr), "search_ctr": auc(y_click[search], p_ctr[search])}
    clicked = y_click == 1
    out["cart"] = auc(y_cart[clicked], p_cart[clicked])  # cart's sample space: clicked rows
    out["test_rows"], out["search_rows"] = len(y_click), int(search.sum())
    if q is not None:
        seen = search & np.isin(q, list(seen_queries))
        unseen = search & ~seen
        out["search_ctr_seen"] = auc(y_click[seen], p_ctr[seen])
        out["search_ctr_unseen"] = auc(y_click[unseen], p_ctr[unseen])
        out["unseen_share"] = float(unseen.sum() / max(search.sum(), 1))
        # Unseen queries split by form: "plain" (only the generator's own words, a brand first at most: new
        # combinations) or "reworded" (synonyms, extra words, typos: the long tail). Seen ones are nearly all plain.
        index = pl.read_parquet(run_dir / "features" / "state" / "text_index.parquet")
        plain = {r for r, t in zip(index["row"].to_list(), index["text"].to_list()) if _plain(t)}
        is_plain = np.isin(q, list(plain))
        for name, m in (("unseen_plain", unseen & is_plain), ("unseen_reworded", unseen & ~is_plain)):
            out[f"search_ctr_{name}"], out[f"rows_{name}"] = auc(y_click[m], p_ctr[m]), int(m.sum())
    return out


def _plain(text: str) -> bool:
    """A query in the generator's plain form: every word but a leading brand from its vocabulary."""
    from pipeline.data.generate import VOCAB

    vocab = {w for v in VOCAB for w in v.split()}
    words = text.split()
    return bool(words) and all(w in vocab for w in words[1:]) and (words[0] in vocab or len(words) > 1)


def _seen_query_rows(run_dir: Path) -> set[int]:
    import polars as pl

    train = pl.read_parquet(run_dir / "features" / "train.parquet", columns=["text__query"])
    return set(train["text__query"].unique().to_list()) - {0}


def titles_per_s(landing: Path, n: int, tcfg) -> float:
    """Frozen-encoder embedding throughput on `n` distinct titles (no cache)."""
    import polars as pl

    from pipeline.features.text import embed, load_encoder

    titles = pl.read_parquet(landing / "items.parquet")["title"].unique().head(n).to_list()
    enc = load_encoder(tcfg, device="cpu")
    embed(titles[:32], tcfg, enc, progress=False)  # warm-up
    t0 = time.perf_counter()
    embed(titles, tcfg, enc, progress=False)
    return len(titles) / (time.perf_counter() - t0)


def _window(landing: Path, days: list[str]):
    """Raw rows of `days` (impressions joined with the items' titles), as build_features gives the fine-tune."""
    import polars as pl

    items = pl.read_parquet(landing / "items.parquet").select("item_id", "title")
    imp = pl.concat([pl.read_parquet(landing / "impressions" / f"dt={d}") for d in days], how="diagonal_relaxed")
    return imp.join(items, on="item_id", how="left")


def probe(args, landing: Path, dates: list[str], base: list[str]) -> None:
    """--probe: fine-tune settings compared without training models: fine-tune wall time, held-out recall@k,
    and the search-ctr AUC of the query-title cosine alone on the test days (seen / unseen queries)."""
    import dataclasses

    import polars as pl

    from pipeline.config import load_config
    from pipeline.evaluation.metrics import auc
    from pipeline.features.finetune import finetune
    from pipeline.features.text import embed, load_encoder

    train = _window(landing, dates[:args.train_days])
    test = _window(landing, dates[-args.test_days:]).filter(pl.col("surface") == "search")
    seen = np.isin(test["query"].to_numpy(), train["query"].drop_nulls().unique().to_numpy())
    y = test["clicked"].to_numpy()
    words = [set(re.split(r"[^a-z0-9]+", (t or "").lower())) - {""} for t in test["query"].to_list()]
    cover = np.array([len(q & set(re.split(r"[^a-z0-9]+", t.lower()))) / max(len(q), 1)
                      for q, t in zip(words, test["title"].to_list())])  # ~ the lexical qt_coverage feature
    print(json.dumps({"setting": "lexical coverage", "auc": auc(y, cover), "auc_seen": auc(y[seen], cover[seen]),
                      "auc_unseen": auc(y[~seen], cover[~seen])}), flush=True)
    for n, setting in enumerate(["frozen", *args.probe]):
        over = [] if setting == "frozen" else setting.split(",")
        tcfg = load_config(overrides=[*base, *over]).text
        row = {"setting": setting}
        if setting != "frozen":
            out = Path(args.work) / "probe" / f"setting-{n}"
            shutil.rmtree(out, ignore_errors=True)
            info = finetune(tcfg, train, out, dt.date.fromisoformat(dates[args.train_days - 1]), args.seed)
            row.update(seconds=round(info["fit"]["seconds"], 1), steps=info["fit"]["steps"], pairs=info["pairs"],
                       recall=info["recall"])
            tcfg = dataclasses.replace(tcfg, model=str(out))
        enc = load_encoder(tcfg, device="cpu")
        texts = sorted(set(test["query"].to_list()) | set(test["title"].to_list()))
        vecs = dict(zip(texts, embed(texts, tcfg, enc, progress=False)))
        cos = np.array([vecs[q] @ vecs[t] for q, t in zip(test["query"].to_list(), test["title"].to_list())])
        row.update(cos_auc=auc(y, cos), cos_auc_seen=auc(y[seen], cos[seen]), cos_auc_unseen=auc(y[~seen], cos[~seen]),
                   unseen_share=round(float((~seen).mean()), 3))
        print(json.dumps(row), flush=True)


def run_variant(name: str, base: list[str], work: Path, landing: Path, first: str, last: str) -> dict:
    from pipeline.config import load_config
    from pipeline.features.build import build_features
    from pipeline.features.text import ENCODER_INFO
    from pipeline.paths import Layout
    from pipeline.training.train import train_model

    home = work / "homes" / name
    if home.exists():
        shutil.rmtree(home)
    _lake(landing, home, first)
    cfg = load_config(overrides=[*base, *VARIANTS[name]], home=home)
    t0 = time.perf_counter()
    build_features(cfg, last, run_id=name)
    t_features = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = train_model(cfg, name, "mtl")
    t_train = time.perf_counter() - t0
    run_dir = Layout.of(home).run_dir(name)
    row = {"variant": name, "features_s": round(t_features, 1), "train_s": round(t_train, 1),
           **_aucs(run_dir, out["model_dir"], _seen_query_rows(run_dir) if cfg.text.enabled else set())}
    info_path = run_dir / "features" / "state" / "encoder" / ENCODER_INFO
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        row["finetune"] = {"seconds": round(info["fit"]["seconds"], 1), "steps": info["fit"]["steps"],
                           "pairs": info["pairs"], "recall": info["recall"]}
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/text_bench")
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--train-days", type=int, default=4)
    p.add_argument("--test-days", type=int, default=2)
    p.add_argument("--impressions-per-day", type=int, default=12000)
    p.add_argument("--users", type=int, default=1500)
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--long-tail", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--pairs", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default="off,frozen,contrastive")
    p.add_argument("--set", action="append", default=[], dest="overrides", help="extra config key=value")
    p.add_argument("--probe", action="append", default=[],
                   help="compare fine-tune settings (comma-separated key=value, one --probe each) by the cosine "
                        "alone, without training models (see `probe`)")
    args = p.parse_args(argv)
    import torch

    from pipeline.config import load_config
    from pipeline.data.generate import generate

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    landing = work / "landing"
    if landing.exists():
        shutil.rmtree(landing)
    dates = generate(landing, days=args.days, impressions_per_day=args.impressions_per_day, users=args.users,
                     items=args.items, seed=args.seed, start_date="2026-06-01", long_tail=args.long_tail)["dates"]
    if args.train_days + 1 + args.test_days > args.days:
        sys.exit("--days must cover train + 1 valid + test days")
    base = [f"data.train_days={args.train_days}", "data.valid_days=1", f"data.test_days={args.test_days}",
            f"train.epochs={args.epochs}", f"train.threads={args.threads}", f"text.finetune_pairs={args.pairs}",
            "text.finetune_batch_size=32", *args.overrides]
    if args.probe:
        return probe(args, landing, dates, base)
    tcfg = load_config(overrides=base).text
    rows = [{"variant": "encoder", "titles_per_s": round(titles_per_s(landing, 1000, tcfg), 1)}]
    print(json.dumps(rows[0]), flush=True)
    for name in args.variants.split(","):
        rows.append(run_variant(name, base, work, landing, dates[0], dates[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| variant | search ctr AUC | seen-query | unseen-query (share) | unseen plain / reworded | ctr AUC "
          "| cart AUC | features s |")
    print("|---|---|---|---|---|---|---|---|")
    f = "{:.4f}".format
    for r in rows[1:]:
        seen = f(r["search_ctr_seen"]) if "search_ctr_seen" in r else "n/a"
        unseen = f"{f(r['search_ctr_unseen'])} ({r['unseen_share']:.2f})" if "search_ctr_unseen" in r else "n/a"
        long = (f"{f(r['search_ctr_unseen_plain'])} / {f(r['search_ctr_unseen_reworded'])}"
                if "search_ctr_unseen_plain" in r else "n/a")
        print(f"| {r['variant']} | {f(r['search_ctr'])} | {seen} | {unseen} | {long} | {f(r['ctr'])} | {f(r['cart'])} "
              f"| {r['features_s']} |")
    print(f"\nfrozen encoder: {rows[0]['titles_per_s']} titles/s")
    for r in rows[1:]:
        if "finetune" in r:
            print(f"{r['variant']}: fine-tune {json.dumps(r['finetune'])}")


if __name__ == "__main__":
    main()
