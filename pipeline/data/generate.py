"""Synthetic e-commerce logs in the raw data contract (CONTRACT.md), with the structure a real shop has.

What drives the labels (so a model has something to learn beyond popularity):
- click: user taste for the item's category, heavy-tailed item popularity, position bias, query-title word
  overlap on search, price sensitivity of the user's segment (mild), surface and hour of day;
- cart (given click): brand affinity of brand-conscious users, price sensitivity (strong), purchase intent;
- purchase (given click): mostly from carted rows, driven by price relative to the category (scaled by the
  user's price sensitivity), item quality and the user's purchase intent (a latent per-user trait).
Users' segments correlate with their observable attributes (age bucket, city tier), so features can find them.

Everything is vectorised numpy; one `numpy.random.Generator` seeded once makes the output deterministic.
Long-tail text, drifting popularity and new items (pipeline.data.longtail) are off by default and draw from a
second generator, so turning them off gives exactly the files earlier versions wrote.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np

CATEGORIES = (
    "sneakers", "dress", "headphones", "backpack", "watch", "jacket", "lamp", "blender", "novel", "lipstick",
    "jeans", "sofa", "kettle", "phone case", "drone", "tent", "yoga mat", "perfume", "mug", "keyboard",
    "sunglasses", "scarf", "speaker", "pillow", "toy car", "shampoo", "bicycle helmet", "camera", "wallet",
    "boots",
)
ADJECTIVES = (
    "classic", "premium", "slim", "vintage", "sporty", "compact", "wireless", "organic", "deluxe",
    "lightweight",
    "waterproof", "cozy", "modern", "retro", "ergonomic", "portable", "elegant", "rugged", "soft", "smart",
)
COLORS = ("black", "white", "red", "blue", "green", "grey", "pink", "beige", "navy", "gold", "silver")
MATERIALS = ("cotton", "leather", "steel", "bamboo", "wool", "silicone", "ceramic", "canvas", "linen")
BRAND_SYLLABLES = ("zo", "ka", "mi", "lux", "ver", "no", "tra", "bel", "qui", "den", "sol", "ar", "fen", "ro")
AGE_BUCKETS = ("18-24", "25-34", "35-44", "45-54", "55+")
GENDERS = ("f", "m", "x")
SURFACE_P = {"recommend": 0.6, "search": 0.25, "ad": 0.15}
SEGMENT_SENS = np.array([1.6, 0.8, 0.2])  # price sensitivity of budget / mid / premium users
# One vocabulary over the title word slots; a title's token ids index it (query-title overlap counts ids).
VOCAB = ADJECTIVES + COLORS + MATERIALS + CATEGORIES
SLOT_OFFSET = np.cumsum([0, len(ADJECTIVES), len(COLORS), len(MATERIALS)])  # adjective colour material noun


def _brand_names(rng: np.random.Generator, n: int) -> list[str]:
    names: set[str] = set()
    while len(names) < n:
        k = rng.integers(2, 4)
        names.add("".join(rng.choice(BRAND_SYLLABLES, size=k)).capitalize())
    return sorted(names)


def _make_users(rng: np.random.Generator, n: int, start: dt.datetime, days: int) -> tuple[dict, dict]:
    """User columns and latent traits. About 10% sign up during the window (cold start): a user who signs up
    on day k first appears on day k + 1, so signup_ts is never after the first impression."""
    age = rng.integers(0, len(AGE_BUCKETS), n)
    tier = rng.integers(1, 6, n)
    # Premium users are more often older and in tier-1 cities; budget users younger and in smaller cities.
    lean = 0.5 * (age - 2) - 0.45 * (tier - 3) + rng.normal(0, 0.5, n)
    segment = np.digitize(lean, [-0.6, 0.6]).astype(np.int64)  # 0 budget, 1 mid, 2 premium
    new = rng.random(n) < 0.1
    offset = np.where(new, rng.integers(0, days * 86400, n), -rng.integers(86400, 900 * 86400, n))  # seconds
    offset[0] = -86400  # at least one user is active from the first day
    signup = np.datetime64(start.replace(tzinfo=None), "us") + offset.astype("timedelta64[s]")
    cols = {
        "user_id": [f"u{i:07d}" for i in range(n)],
        "age_bucket": [None if m else AGE_BUCKETS[a] for a, m in zip(age, rng.random(n) < 0.05)],
        "gender": [None if m else GENDERS[g]
                   for g, m in zip(rng.choice(3, n, p=[0.5, 0.45, 0.05]), rng.random(n) < 0.08)],
        "city_tier": [None if m else int(t) for t, m in zip(tier, rng.random(n) < 0.03)],
        "signup_ts": signup,
    }
    latent = {
        "taste": rng.normal(0, 1.0, (n, len(CATEGORIES))) * 1.3,  # user x category affinity
        "sens": SEGMENT_SENS[segment],
        "brand_conscious": rng.random(n) < (0.2 + 0.3 * (segment == 2)),
        "activity": rng.pareto(1.5, n) + 1.0,  # heavy-tailed requests per user
        "active_from": np.where(offset >= 0, offset // 86400 + 1, 0),  # first day index the user may appear
        "buyer": rng.normal(0, 1.2, n),  # purchase intent: some users browse, some buy
    }
    return cols, latent


def _make_items(rng: np.random.Generator, n: int) -> tuple[dict, dict]:
    n_cat = len(CATEGORIES)
    brands = _brand_names(rng, max(20, min(400, n // 20)))
    cat = rng.integers(0, n_cat, n)
    brand = rng.integers(0, len(brands), n)
    no_brand = rng.random(n) < 0.05
    adj, color, mat = (rng.integers(0, len(words), n) for words in (ADJECTIVES, COLORS, MATERIALS))
    brand_quality = rng.normal(0, 1.0, len(brands))
    cat_price = np.exp(rng.uniform(np.log(8), np.log(400), n_cat))
    quality = 0.7 * np.where(no_brand, -0.5, brand_quality[brand]) + rng.normal(0, 0.7, n)
    price = np.round(cat_price[cat] * np.exp(rng.normal(0, 0.45, n) + 0.25 * quality), 2)
    price = np.maximum(price, 0.5)
    titles = [
        " ".join(w for w in (None if nb else brands[b], ADJECTIVES[a], COLORS[c], MATERIALS[m], CATEGORIES[k])
                 if w)
        for nb, b, a, c, m, k in zip(no_brand, brand, adj, color, mat, cat)
    ]
    cols = {
        "item_id": [f"i{j:07d}" for j in range(n)],
        "title": titles,
        "category": [CATEGORIES[k] for k in cat],
        "brand": [None if nb else brands[b] for nb, b in zip(no_brand, brand)],
        "shop_id": [f"s{s:05d}" for s in rng.integers(0, max(2, n // 25), n)],
        "price": price,
    }
    tokens = np.stack([adj, color, mat, cat], axis=1) + SLOT_OFFSET  # [n, 4] ids into VOCAB
    pop = rng.pareto(1.1, n) + 1.0  # heavy-tailed popularity
    rel_price = np.log(price / cat_price[cat])
    latent = {"cat": cat, "brand_premium": np.where(no_brand, 0.0, brand_quality[brand]), "quality": quality,
              "pop": np.log(pop), "pop_w": pop / pop.sum(), "rel_price": rel_price, "tokens": tokens}
    return cols, latent


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


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


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


def _labels(rng, user, item, req, position, surface, hour, overlap, users: dict, items: dict):
    """Funnel labels (clicked, carted, purchased) as int8 arrays; cart and purchase only on clicks."""
    surf = surface[req]
    sens = users["sens"][user]
    rel = items["rel_price"][item]
    taste = users["taste"][user, items["cat"][item]]
    click = (-3.2 + 0.8 * taste + 0.35 * (items["pop"][item] - 1.0) - 0.55 * np.log1p(position)
             + np.where(surf == 1, 1.0 * overlap - 1.2, 0.0) + np.where(surf == 2, -0.5, 0.0)
             - 0.35 * sens * rel + 0.15 * np.cos((hour - 20) / 24 * 2 * np.pi))
    clicked = rng.random(len(item)) < _sigmoid(click)
    brand = users["brand_conscious"][user] * items["brand_premium"][item]
    buyer = users["buyer"][user]
    cart = -1.2 + 1.1 * brand - 1.5 * sens * rel + 0.35 * items["quality"][item] + 0.15 * taste + 0.6 * buyer
    carted = clicked & (rng.random(len(item)) < _sigmoid(cart))
    buy = (np.where(carted, -0.3, -3.2) - 2.5 * sens * rel + 0.2 * items["quality"][item] - 0.2 * (surf == 2)
           + 0.8 * buyer)
    purchased = clicked & (rng.random(len(item)) < _sigmoid(buy))
    return clicked.astype(np.int8), carted.astype(np.int8), purchased.astype(np.int8)


def _day(rng, day: dt.date, index: int, n: int, users_cols: dict, users: dict, items_cols: dict, items: dict,
         aux=None, long_tail: float = 0.0):
    """Day number `index` of the window as a pyarrow Table in the contract schema (users active by then)."""
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
    labels = _labels(rng, user[req], item, req, position, surface, hour, overlap, users, items)
    clicked, carted, purchased = labels
    midnight = np.datetime64(day.isoformat(), "us")
    ts = midnight + sec[req].astype("timedelta64[s]") + position.astype("timedelta64[ms]")
    tag = day.strftime("%Y%m%d")
    ids = pa.array(np.arange(n)).cast(pa.string())
    rids = pa.array(np.arange(n_req)).cast(pa.string())
    return pa.table({
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


def _write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    from pipeline.io import atomic_path

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


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
) -> dict:
    """Write a landing folder in the contract: users.parquet, items.parquet, impressions/dt=D/part-0.parquet.

    Each day folder gets `_SUCCESS` after its file (the DAG sensor waits for it). `start_date` defaults to the
    `days` days ending yesterday (UTC). Same arguments -> byte-identical files. Returns {"landing", "dates"}.
    `long_tail` (0..1): share of item titles reworded once and of each day's search queries reworded afresh
    (synonyms, word order, extra words, typos). `popularity_drift` (>= 0): daily step of a random walk on each
    item's log popularity. `new_items` (0..1): share of items that first appear on a random later day.
    """
    import pyarrow as pa

    from pipeline.data.schema import ITEMS, USERS
    from pipeline.errors import ConfigError
    from pipeline.paths import parse_date

    if days < 1 or impressions_per_day < 1 or users < 1 or items < 1:
        raise ConfigError("generate: days, impressions_per_day, users and items must all be >= 1")
    if not (0 <= long_tail <= 1 and popularity_drift >= 0 and 0 <= new_items < 1):
        raise ConfigError(f"generate: long_tail must be in [0, 1] (got {long_tail}), popularity_drift >= 0 (got "
                          f"{popularity_drift}), new_items in [0, 1) (got {new_items})")
    if start_date is None:
        start = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)
    else:
        start = parse_date(start_date)
    out = Path(out)
    rng = np.random.default_rng(seed)
    start_ts = dt.datetime.combine(start, dt.time(), tzinfo=dt.UTC)
    users_cols, user_latent = _make_users(rng, users, start_ts, days)
    items_cols, item_latent = _make_items(rng, items)
    aux = np.random.default_rng([seed, 1])  # long tail and catalogue moves: the main stream stays as it was
    if long_tail > 0:
        from pipeline.data.longtail import reword_titles

        reword_titles(aux, items_cols, item_latent["tokens"], VOCAB, long_tail)
    catalogue = None
    if popularity_drift > 0 or new_items > 0:
        from pipeline.data.longtail import Catalogue

        catalogue = Catalogue.make(aux, np.exp(item_latent["pop"]), days, popularity_drift, new_items)
    _write_parquet(pa.table(users_cols, schema=USERS), out / "users.parquet")
    _write_parquet(pa.table(items_cols, schema=ITEMS), out / "items.parquet")
    dates = [start + dt.timedelta(days=i) for i in range(days)]
    for i, d in enumerate(dates):
        day_items = catalogue.day(item_latent, i) if catalogue else item_latent
        table = _day(rng, d, i, impressions_per_day, users_cols, user_latent, items_cols, day_items, aux, long_tail)
        folder = out / "impressions" / f"dt={d.isoformat()}"
        _write_parquet(table, folder / "part-0.parquet")
        (folder / "_SUCCESS").write_text("")
    return {"landing": str(out), "dates": [d.isoformat() for d in dates]}
