"""Long-tail text and a moving catalogue for the synthetic shop (pipeline.data.generate), all off by default.

- `reword`: one text said another way: synonyms, word order, extra words, typos. Titles of a `long_tail` share
  of items are reworded once; each day a `long_tail` share of search queries is reworded afresh, so every day
  brings query strings never seen before. The labels still follow the *meaning* (the generator's word ids), so
  a text encoder that maps a reworded text near its plain form keeps the signal a frozen one partly loses.
- `Catalogue`: per-day item popularity that drifts (a random walk on log popularity, `popularity_drift` per
  day) and items that first appear during the log (`new_items` share, each from a random day on).

Everything draws from its own generator, so the default settings leave the generator's output unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SYNONYMS = {
    "sneakers": ("trainers", "running shoes", "kicks"), "dress": ("gown", "frock"),
    "headphones": ("earphones", "headset", "cans"), "backpack": ("rucksack", "daypack"),
    "watch": ("wristwatch", "timepiece"), "jacket": ("coat", "windbreaker"), "lamp": ("light", "lantern"),
    "blender": ("mixer", "smoothie maker"), "novel": ("book", "paperback"), "lipstick": ("lip colour", "lip tint"),
    "jeans": ("denims", "denim pants"), "sofa": ("couch", "settee"), "kettle": ("tea kettle", "water boiler"),
    "phone case": ("phone cover", "mobile case"), "drone": ("quadcopter", "camera drone"),
    "tent": ("camping shelter", "dome tent"), "yoga mat": ("exercise mat", "fitness mat"),
    "perfume": ("fragrance", "scent"), "mug": ("cup", "coffee cup"), "keyboard": ("keypad", "mechanical keys"),
    "sunglasses": ("shades", "sun glasses"), "scarf": ("shawl", "muffler"), "speaker": ("loudspeaker", "soundbox"),
    "pillow": ("cushion", "headrest"), "toy car": ("model car", "kids car"), "shampoo": ("hair wash", "hair soap"),
    "bicycle helmet": ("bike helmet", "cycling helmet"), "camera": ("cam", "digital camera"),
    "wallet": ("purse", "billfold"), "boots": ("ankle boots", "booties"),
    "classic": ("timeless", "traditional"), "premium": ("luxury", "high end"), "slim": ("thin", "slender"),
    "vintage": ("old school", "antique style"), "sporty": ("athletic",), "compact": ("small", "mini"),
    "wireless": ("cordless", "bluetooth"), "organic": ("natural", "eco"), "deluxe": ("fancy", "luxe"),
    "lightweight": ("light", "featherweight"), "waterproof": ("water resistant", "rainproof"),
    "cozy": ("comfy", "snug"), "modern": ("contemporary",), "retro": ("throwback",),
    "ergonomic": ("comfortable",), "portable": ("travel", "handheld"), "elegant": ("chic", "stylish"),
    "rugged": ("tough", "heavy duty"), "soft": ("plush",), "smart": ("connected", "intelligent"),
    "grey": ("gray", "charcoal"), "navy": ("dark blue",), "beige": ("cream", "sand"), "red": ("crimson", "scarlet"),
    "black": ("jet black", "ebony"), "white": ("ivory", "snow white"), "pink": ("rose",), "gold": ("golden",),
    "silver": ("metallic",), "blue": ("azure",), "green": ("olive", "emerald"),
    "steel": ("stainless", "metal"), "leather": ("faux leather", "suede"), "cotton": ("pure cotton",),
    "wool": ("merino", "knit"), "silicone": ("rubber",), "ceramic": ("porcelain", "stoneware"),
}
QUERY_EXTRAS = ("cheap", "best", "buy", "sale", "for women", "for men", "for kids", "gift", "new", "discount",
                "top rated", "near me", "online", "deal", "2026")
TITLE_EXTRAS = ("new", "bestseller", "limited edition", "gift box", "free shipping", "2026 model", "original",
                "official", "bundle")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _typo(rng: np.random.Generator, word: str) -> str:
    """Drop, double or swap one letter of a word of 4+ letters (shorter words are left alone)."""
    if len(word) < 4:
        return word
    i, kind = int(rng.integers(1, len(word) - 1)), int(rng.integers(0, 4))
    if kind == 0:
        return word[:i] + word[i + 1:]
    if kind == 1:
        return word[:i] + word[i] + word[i:]
    if kind == 2:
        return word[:i - 1] + word[i] + word[i - 1] + word[i + 1:]
    return word[:i] + LETTERS[int(rng.integers(0, 26))] + word[i + 1:]


def reword(rng: np.random.Generator, phrases: list[str], extras: tuple[str, ...], brand: str | None = None,
           typo_p: float = 0.3) -> str:
    """A text of `phrases` (the words in their plain order, multi-word phrases kept whole) said another way:
    each phrase a synonym with p 0.5, order shuffled with p 0.35, one extra word with p 0.5 and a typo with
    `typo_p`. The brand (when given) stays first and unchanged."""
    words = [rng.choice(SYNONYMS[p]) if p in SYNONYMS and rng.random() < 0.5 else p for p in phrases]
    if len(words) > 1 and rng.random() < 0.35:
        words = [words[i] for i in rng.permutation(len(words))]
    if rng.random() < 0.5:
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(extras)))
    if rng.random() < typo_p:
        j = int(rng.integers(0, len(words)))
        words[j] = " ".join(_typo(rng, w) for w in str(words[j]).split(" "))
    return " ".join(([brand] if brand else []) + [str(w) for w in words])


def reword_queries(rng: np.random.Generator, qtext: list, qtok: np.ndarray, vocab: tuple[str, ...],
                   share: float) -> list:
    """A `share` of the search queries (None = not a search) said another way; `qtok` [R, 3] their word ids
    into `vocab` (-1 = none). A query is "[brand ]plain words"; the brand is kept."""
    out = list(qtext)
    for r, text in enumerate(qtext):
        if text is None or rng.random() >= share:
            continue
        phrases = [vocab[t] for t in qtok[r] if t >= 0]
        plain = " ".join(phrases)
        brand = text[: len(text) - len(plain) - 1] if len(text) > len(plain) else None
        out[r] = reword(rng, phrases, QUERY_EXTRAS, brand)
    return out


def reword_titles(rng: np.random.Generator, cols: dict, tokens: np.ndarray, vocab: tuple[str, ...],
                  share: float) -> None:
    """A `share` of the item titles said another way, in place; `tokens` [n, 4] the items' word ids (their
    meaning, which the labels follow, is unchanged)."""
    for j in np.flatnonzero(rng.random(len(cols["title"])) < share):
        cols["title"][j] = reword(rng, [vocab[t] for t in tokens[j]], TITLE_EXTRAS, cols["brand"][j], typo_p=0.15)


@dataclass
class Catalogue:
    """Per-day availability and popularity of the items. `log_pop` [n] is the base log popularity;
    `first_day` [n] the first day index an item may be shown (0 for the starting catalogue); `walk` [days, n]
    the drift added to log popularity on each day."""

    log_pop: np.ndarray
    first_day: np.ndarray
    walk: np.ndarray

    @classmethod
    def make(cls, rng: np.random.Generator, pop: np.ndarray, days: int, drift: float, new_share: float):
        n = len(pop)
        first = np.zeros(n, dtype=np.int64)
        if new_share > 0 and days > 1:
            new = rng.random(n) < new_share
            new[int(np.argmax(pop))] = False  # the most popular item is there from day 0, so no day is empty
            first[new] = rng.integers(1, days, int(new.sum()))
        steps = rng.normal(0.0, 1.0, (days, n)) * drift
        steps[0] = 0.0
        return cls(np.log(pop), first, np.cumsum(steps, axis=0))

    def day(self, items: dict, index: int) -> dict:
        """The item latent dict as of day `index`: drifted `pop` / `pop_w`, 0 weight for items not out yet."""
        log_pop = self.log_pop + self.walk[index]
        w = np.exp(log_pop - log_pop.max()) * (self.first_day <= index)
        return {**items, "pop": log_pop, "pop_w": w / w.sum(), "available": self.first_day <= index}
