"""The synthetic shop's hidden model: users and items with their latent traits, and the funnel probabilities.

pipeline.data.generate draws requests and items shown from these; the label model here is the only place that
says how likely a click, a cart and a purchase are, so the labels the generator draws and the oracle it can
write (`funnel_probs`, the true probabilities) cannot disagree. All draws come from the caller's generator, in
a fixed order: same generator state in, same traits and labels out.

What drives the labels (so a model has something to learn beyond popularity):
- click: user taste for the item's category, heavy-tailed item popularity, position bias, query-title word
  overlap on search, price sensitivity of the user's segment (mild), surface and hour of day;
- cart (given click): brand affinity of brand-conscious users, price sensitivity (strong), purchase intent;
- purchase (given click): mostly from carted rows, driven by price relative to the category (scaled by the
  user's price sensitivity), item quality and the user's purchase intent (a latent per-user trait).
Users' segments correlate with their observable attributes (age bucket, city tier), so features can find them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

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


def make_users(rng: np.random.Generator, n: int, start: dt.datetime, days: int) -> tuple[dict, dict]:
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


def make_items(rng: np.random.Generator, n: int) -> tuple[dict, dict]:
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


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class Funnel:
    """Logits of one day's rows [n]: click; cart given click; purchase given click, when carted and when not."""

    click: np.ndarray
    cart: np.ndarray
    buy_carted: np.ndarray
    buy_not_carted: np.ndarray


def funnel(user, item, surf, position, hour, overlap, users: dict, items: dict) -> Funnel:
    """The label model for rows showing `item` [n] to `user` [n] (indices into `items` / `users`, the latent
    dicts of make_items / make_users, items as of the row's day) on surface code `surf` [n] (0 recommend,
    1 search, 2 ad) at slot `position` [n], hour of day `hour` [n] (float) with `overlap` [n] query words in
    the title (0 off search)."""
    sens = users["sens"][user]
    rel = items["rel_price"][item]
    taste = users["taste"][user, items["cat"][item]]
    click = (-3.2 + 0.8 * taste + 0.35 * (items["pop"][item] - 1.0) - 0.55 * np.log1p(position)
             + np.where(surf == 1, 1.0 * overlap - 1.2, 0.0) + np.where(surf == 2, -0.5, 0.0)
             - 0.35 * sens * rel + 0.15 * np.cos((hour - 20) / 24 * 2 * np.pi))
    brand = users["brand_conscious"][user] * items["brand_premium"][item]
    buyer = users["buyer"][user]
    cart = -1.2 + 1.1 * brand - 1.5 * sens * rel + 0.35 * items["quality"][item] + 0.15 * taste + 0.6 * buyer
    # The base comes first, as the draw always summed it: the same float rounding, so the same labels.
    buy = [base - 2.5 * sens * rel + 0.2 * items["quality"][item] - 0.2 * (surf == 2) + 0.8 * buyer
           for base in (-0.3, -3.2)]
    return Funnel(click, cart, *buy)


def draw_labels(rng: np.random.Generator, f: Funnel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clicked, carted, purchased) int8 [n]: three uniforms per row, in that order; cart and purchase only on
    clicks, and a carted click buys far more often than one that was not carted."""
    n = len(f.click)
    clicked = rng.random(n) < sigmoid(f.click)
    carted = clicked & (rng.random(n) < sigmoid(f.cart))
    purchased = clicked & (rng.random(n) < sigmoid(np.where(carted, f.buy_carted, f.buy_not_carted)))
    return clicked.astype(np.int8), carted.astype(np.int8), purchased.astype(np.int8)


def funnel_probs(f: Funnel) -> dict[str, np.ndarray]:
    """The true probabilities behind `draw_labels`, float64 [n] each: p_click; p_cart_given_click;
    p_purchase_given_click (carted or not, so P(cart | click) weighs the two purchase rates). Over all rows:
    P(cart) = p_click * p_cart_given_click and P(purchase) = p_click * p_purchase_given_click."""
    p_cart = sigmoid(f.cart)
    p_buy = p_cart * sigmoid(f.buy_carted) + (1.0 - p_cart) * sigmoid(f.buy_not_carted)
    return {"p_click": sigmoid(f.click), "p_cart_given_click": p_cart, "p_purchase_given_click": p_buy}
