"""Synthetic e-commerce logs in the raw data contract (CONTRACT.md), with the structure a real shop has.

This module draws the traffic: requests, the items each list shows, search queries, timestamps. The hidden
model (users' and items' latent traits, what drives click, cart and purchase) is pipeline.data.generate_model.
Optionally (`oracle_out`) the true probabilities the labels were drawn with are written too, outside the
landing folder: they are not part of the contract, and computing them draws nothing.

Everything is vectorised numpy; one `numpy.random.Generator` seeded once makes the output deterministic.
Long-tail text, drifting popularity and new items (pipeline.data.longtail) are off by default and draw from a
second generator, so turning them off gives exactly the files earlier versions wrote.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np

from pipeline.data.generate_model import (  # noqa: F401  (ADJECTIVES ... VOCAB: names benches import from here)
    ADJECTIVES,
    CATEGORIES,
    COLORS,
    MATERIALS,
    SURFACE_P,
    VOCAB,
    draw_labels,
    funnel,
    funnel_probs,
    make_items,
    make_users,
)

# The oracle file of a day: one row per impression, in the impressions file's order (joins on event_id).
ORACLE_FIELDS = ("event_id", "p_click", "p_cart_given_click", "p_purchase_given_click")


def _request_sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Sizes in [5, 20] summing exactly to n (a single shorter request when n < 5)."""
    if n < 5:
        return np.array([n] if n else [], dtype=np.int64)
    k = max(1, round(n / 12.5))
    k = min(k, n // 5)
    sizes = 5 + rng.multinomial(n - 5 * k, np.full(k, 1.0 / k))
    for _ in range(100):  # push overflow above 20 onto requests with room
        over = np.clip(sizes - 20, 0, None)
        if not over.any():
            break
        sizes -= over
        room = np.flatnonzero(sizes < 20)
        np.add.at(sizes, rng.choice(room, over.sum()), 1)
    return sizes


def _sample_in_category(rng, cats: np.ndarray, items: dict) -> np.ndarray:
    """Items drawn by popularity within each row's category (one vectorised searchsorted)."""
    order = np.argsort(items["cat"], kind="stable")
    cdf = np.cumsum(items["pop_w"][order])
    cat_sorted = items["cat"][order]
    n_cat = len(CATEGORIES)
    lo_idx = np.searchsorted(cat_sorted, np.arange(n_cat), side="left")
    hi_idx = np.searchsorted(cat_sorted, np.arange(n_cat), side="right")
    base = np.concatenate([[0.0], cdf])
    lo, hi = base[lo_idx[cats]], base[hi_idx[cats]]
    empty = (hi_idx[cats] == lo_idx[cats]) | (hi <= lo)  # no items, or none out yet (longtail.Catalogue)
    u = lo + rng.random(len(cats)) * (hi - lo)
    pos = np.clip(np.searchsorted(cdf, u, side="right"), lo_idx[cats], np.maximum(hi_idx[cats] - 1, 0))
    out = order[pos]
    if empty.any():  # a category with no items: fall back to global popularity
        out[empty] = rng.choice(len(cdf), int(empty.sum()), p=items["pop_w"])
    return out


def _gumbel_pick(rng, logits: np.ndarray) -> np.ndarray:
    """One category per row of `logits` [R, C], sampled from softmax(logits)."""
    return np.argmax(logits - np.log(-np.log(rng.random(logits.shape))), axis=1)


def _choose_items(rng, user: np.ndarray, surface: np.ndarray, req: np.ndarray, users: dict, items: dict):
    """Items for each row [n] plus the per-request search intent (category, intended item)."""
    n, n_req = len(req), len(surface)
    req_cat = _gumbel_pick(rng, users["taste"][user])  # the request's intent category [R]
    row_cat = _gumbel_pick(rng, users["taste"][user[req]] * 0.8)  # recommend: taste-driven per row
    is_search = surface[req] == 1
    row_cat = np.where(is_search, req_cat[req], row_cat)
    item = _sample_in_category(rng, row_cat, items)
    explore = rng.random(n) < np.where(surface[req] == 2, 0.7, 0.25)  # ads and exploration: global popularity
    item[explore] = rng.choice(len(items["pop_w"]), int(explore.sum()), p=items["pop_w"])
    intended = _sample_in_category(rng, req_cat, items)
    # Put the intended item into each search result list at a random slot.
    starts = np.flatnonzero(np.r_[True, req[1:] != req[:-1]])
    sizes = np.diff(np.r_[starts, n])
    slot = starts + (rng.random(n_req) * sizes).astype(np.int64)
    search_req = np.flatnonzero(surface == 1)
    item[slot[search_req]] = intended[search_req]
    keep = np.zeros(n, dtype=bool)
    keep[slot[search_req]] = True
    _dedupe(rng, item, req, keep, items["cat"])
    return item, intended


def _dedupe(rng, item: np.ndarray, req: np.ndarray, keep: np.ndarray, cat: np.ndarray, tries: int = 12):
    """Redraw (in place) rows that repeat an item already in their request; rows in `keep` are never redrawn.

    A repeat is replaced by a uniform draw from the same category (taste is kept; a popularity draw would hit
    the same head item again) for the first third of the tries, then from the whole catalog. Repeats left
    after `tries` (a catalog smaller than a list) stay.
    """
    order_by_cat = np.argsort(cat, kind="stable")
    lo = np.searchsorted(cat[order_by_cat], np.arange(cat.max() + 1), side="left")
    size = np.searchsorted(cat[order_by_cat], np.arange(cat.max() + 1), side="right") - lo
    for attempt in range(tries):
        key = req * len(cat) + item
        order = np.lexsort((~keep, key))  # within a (request, item) group, kept rows first
        dup = np.zeros(len(item), dtype=bool)
        dup[order[1:]] = key[order[1:]] == key[order[:-1]]
        if not dup.any():
            return
        if attempt < tries // 3:
            c = cat[item[dup]]
            item[dup] = order_by_cat[lo[c] + (rng.random(int(dup.sum())) * size[c]).astype(np.int64)]
        else:
            item[dup] = rng.integers(0, len(cat), int(dup.sum()))


def _queries(rng, surface: np.ndarray, intended: np.ndarray, items_cols: dict, items: dict):
    """Query text and token ids [R, 3] (-1 = none) for search requests; other surfaces get None."""
    n_req = len(surface)
    qtok = np.full((n_req, 3), -1, dtype=np.int64)
    text: list[str | None] = [None] * n_req
    for r in np.flatnonzero(surface == 1):
        toks = items["tokens"][intended[r]]
        # The category noun plus 0-2 of the item's adjective / colour / material words, in title order.
        picked = [int(toks[e]) for e in sorted(rng.choice(3, size=rng.integers(0, 3), replace=False))]
        picked.append(int(toks[3]))
        qtok[r, : len(picked)] = picked
        text[r] = " ".join(VOCAB[t] for t in picked)
        if rng.random() < 0.15 and items_cols["brand"][intended[r]]:
            text[r] = f"{items_cols['brand'][intended[r]].lower()} {text[r]}"
    return text, qtok


def _day(rng, day: dt.date, index: int, n: int, users_cols: dict, users: dict, items_cols: dict, items: dict,
         aux=None, long_tail: float = 0.0):
    """Day number `index` of the window as a pyarrow Table in the contract schema (users active by then), and
    the true funnel probabilities of its rows, in row order (generate_model.funnel_probs: name -> float64 [n])."""
    import pyarrow as pa

    from pipeline.data.schema import IMPRESSIONS

    sizes = _request_sizes(rng, n)
    n_req = len(sizes)
    req = np.repeat(np.arange(n_req), sizes)
    position = (np.arange(n) - np.repeat(np.cumsum(sizes) - sizes, sizes)).astype(np.int32)
    weight = users["activity"] * (users["active_from"] <= index)
    user = rng.choice(len(weight), n_req, p=weight / weight.sum())
    surface = rng.choice(3, n_req, p=list(SURFACE_P.values()))
    item, intended = _choose_items(rng, user, surface, req, users, items)
    if "available" in items:  # a repeat redrawn by _dedupe may be an item not out yet: redraw it by popularity
        for arr in (item, intended):
            late = ~items["available"][arr]
            arr[late] = aux.choice(len(items["pop_w"]), int(late.sum()), p=items["pop_w"])
    qtext, qtok = _queries(rng, surface, intended, items_cols, items)
    if long_tail > 0:
        from pipeline.data.longtail import reword_queries

        qtext = reword_queries(aux, qtext, qtok, VOCAB, long_tail)
    overlap = (qtok[req][:, :, None] == items["tokens"][item][:, None, :]).any(-1).sum(1)
    # Diurnal traffic: more requests in the evening; each request's rows are 1 ms apart.
    sec = np.clip((rng.normal(19.5, 4.0, n_req) % 24) * 3600, 0, 86399 - 1).astype(np.int64)
    hour = sec[req] / 3600.0
    logits = funnel(user[req], item, surface[req], position, hour, overlap, users, items)
    clicked, carted, purchased = draw_labels(rng, logits)
    midnight = np.datetime64(day.isoformat(), "us")
    ts = midnight + sec[req].astype("timedelta64[s]") + position.astype("timedelta64[ms]")
    tag = day.strftime("%Y%m%d")
    ids = pa.array(np.arange(n)).cast(pa.string())
    rids = pa.array(np.arange(n_req)).cast(pa.string())
    table = pa.table({
        "event_id": pa.compute.binary_join_element_wise(f"e{tag}-", ids, ""),
        "request_id": pa.compute.binary_join_element_wise(f"r{tag}-", rids, "").take(req),
        "ts": pa.array(ts, type=IMPRESSIONS.field("ts").type),
        "user_id": pa.array(users_cols["user_id"]).take(user[req]),
        "item_id": pa.array(items_cols["item_id"]).take(item),
        "surface": pa.array(list(SURFACE_P)).take(surface[req]),
        "query": pa.array(qtext, pa.string()).take(req),
        "position": position,
        "clicked": clicked, "carted": carted, "purchased": purchased,
    }, schema=IMPRESSIONS)
    return table, funnel_probs(logits)


def _write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    from pipeline.io import atomic_path

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _check(days: int, impressions_per_day: int, users: int, items: int, long_tail: float, popularity_drift: float,
           new_items: float, out: Path, oracle_out: Path | None) -> None:
    from pipeline.errors import ConfigError

    if days < 1 or impressions_per_day < 1 or users < 1 or items < 1:
        raise ConfigError("generate: days, impressions_per_day, users and items must all be >= 1")
    if not (0 <= long_tail <= 1 and popularity_drift >= 0 and 0 <= new_items < 1):
        raise ConfigError(f"generate: long_tail must be in [0, 1] (got {long_tail}), popularity_drift >= 0 (got "
                          f"{popularity_drift}), new_items in [0, 1) (got {new_items})")
    if oracle_out is not None:
        a, b = out.resolve(), oracle_out.resolve()
        # The landing is the contract: a folder of unknown files inside it would be ingested or rejected.
        if a == b or b.is_relative_to(a) or a.is_relative_to(b):
            raise ConfigError(f"generate: the oracle folder {oracle_out} must lie outside the landing {out} "
                              "(and not contain it)")


def _longtail(aux, items_cols: dict, item_latent: dict, days: int, long_tail: float, popularity_drift: float,
              new_items: float):
    """Reword titles in place (`long_tail` > 0); the moving catalogue (longtail.Catalogue) or None when still."""
    if long_tail > 0:
        from pipeline.data.longtail import reword_titles

        reword_titles(aux, items_cols, item_latent["tokens"], VOCAB, long_tail)
    if popularity_drift > 0 or new_items > 0:
        from pipeline.data.longtail import Catalogue

        return Catalogue.make(aux, np.exp(item_latent["pop"]), days, popularity_drift, new_items)
    return None


def _write_oracle(folder: Path, day: dt.date, event_id, probs: dict[str, np.ndarray]) -> None:
    import pyarrow as pa

    schema = pa.schema([("event_id", pa.string()), *((c, pa.float64()) for c in ORACLE_FIELDS[1:])])
    table = pa.table({"event_id": event_id, **probs}, schema=schema)
    _write_parquet(table, folder / f"dt={day.isoformat()}" / "part-0.parquet")


def generate(
    out: str | os.PathLike,
    days: int,
    impressions_per_day: int,
    users: int,
    items: int,
    seed: int,
    start_date: str | dt.date | None = None,
    *,
    long_tail: float = 0.0,
    popularity_drift: float = 0.0,
    new_items: float = 0.0,
    oracle_out: str | os.PathLike | None = None,
) -> dict:
    """Write a landing folder in the contract: users.parquet, items.parquet, impressions/dt=D/part-0.parquet.

    Each day folder gets `_SUCCESS` after its file (the DAG sensor waits for it). `start_date` defaults to the
    `days` days ending yesterday (UTC). Same arguments -> byte-identical files. Returns {"landing", "dates"}.
    `long_tail` (0..1): share of item titles reworded once and of each day's search queries reworded afresh
    (synonyms, word order, extra words, typos). `popularity_drift` (>= 0): daily step of a random walk on each
    item's log popularity. `new_items` (0..1): share of items that first appear on a random later day.
    `oracle_out` (a folder outside `out`): also write, per day, `oracle_out/dt=D/part-0.parquet` with each
    impression's event_id and the true probabilities its labels were drawn with (columns ORACLE_FIELDS,
    float64; see generate_model.funnel_probs). The landing files are the same with or without it; the result then has
    "oracle" too.
    """
    import pyarrow as pa

    from pipeline.data.schema import ITEMS, USERS
    from pipeline.paths import parse_date

    out = Path(out)
    oracle = None if oracle_out is None else Path(oracle_out)
    _check(days, impressions_per_day, users, items, long_tail, popularity_drift, new_items, out, oracle)
    if start_date is None:
        start = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)
    else:
        start = parse_date(start_date)
    rng = np.random.default_rng(seed)
    start_ts = dt.datetime.combine(start, dt.time(), tzinfo=dt.UTC)
    users_cols, user_latent = make_users(rng, users, start_ts, days)
    items_cols, item_latent = make_items(rng, items)
    aux = np.random.default_rng([seed, 1])  # long tail and catalogue moves: the main stream stays as it was
    catalogue = _longtail(aux, items_cols, item_latent, days, long_tail, popularity_drift, new_items)
    _write_parquet(pa.table(users_cols, schema=USERS), out / "users.parquet")
    _write_parquet(pa.table(items_cols, schema=ITEMS), out / "items.parquet")
    dates = [start + dt.timedelta(days=i) for i in range(days)]
    for i, d in enumerate(dates):
        day_items = catalogue.day(item_latent, i) if catalogue else item_latent
        table, probs = _day(rng, d, i, impressions_per_day, users_cols, user_latent, items_cols, day_items, aux,
                            long_tail)
        if oracle is not None:  # first, so a day whose _SUCCESS is there has its oracle too
            _write_oracle(oracle, d, table["event_id"], probs)
        folder = out / "impressions" / f"dt={d.isoformat()}"
        _write_parquet(table, folder / "part-0.parquet")
        (folder / "_SUCCESS").write_text("")
    result = {"landing": str(out), "dates": [d.isoformat() for d in dates]}
    return result if oracle is None else {**result, "oracle": str(oracle)}
