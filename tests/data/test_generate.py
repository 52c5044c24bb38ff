"""The synthetic generator writes exactly the contract, deterministically, with learnable structure."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline.data.generate import generate
from pipeline.data.schema import IMPRESSIONS, ITEMS, USERS
from pipeline.errors import ConfigError


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUC with tied scores counted half."""
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    ranks = np.empty(len(s))
    _, first, counts = np.unique(s_sorted, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    pos = y == 1
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))


def test_auc_helper_matches_brute_force():
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 60), rng.integers(0, 5, 60).astype(float)
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a, ya in zip(s, y) for b, yb in zip(s, y) if ya > yb]
    assert _auc(y, s) == pytest.approx(np.mean(pairs))


@pytest.fixture(scope="module")
def frames(tiny_landing):
    imp = pl.read_parquet(tiny_landing / "impressions" / "*" / "*.parquet", hive_partitioning=True)
    return imp, pl.read_parquet(tiny_landing / "users.parquet"), pl.read_parquet(tiny_landing / "items.parquet")


def test_files_are_exactly_the_contract(tiny_landing):
    assert pq.read_schema(tiny_landing / "users.parquet").remove_metadata() == USERS
    assert pq.read_schema(tiny_landing / "items.parquet").remove_metadata() == ITEMS
    days = sorted(p.name for p in (tiny_landing / "impressions").iterdir())
    assert days == [f"dt=2026-01-{d:02d}" for d in range(1, 11)]
    for d in days:
        folder = tiny_landing / "impressions" / d
        assert sorted(p.name for p in folder.iterdir()) == ["_SUCCESS", "part-0.parquet"]
        assert pq.read_schema(folder / "part-0.parquet").remove_metadata() == IMPRESSIONS
        assert pq.read_metadata(folder / "part-0.parquet").num_rows == 3000


def test_contract_rules_hold(frames):
    imp, users, items = frames
    assert imp["event_id"].n_unique() == imp.height
    assert users["user_id"].n_unique() == users.height and items["item_id"].n_unique() == items.height
    assert imp["user_id"].is_in(users["user_id"].implode()).all() and imp["item_id"].is_in(items["item_id"].implode()).all()
    assert imp.filter((pl.col("clicked") == 0) & ((pl.col("carted") == 1) | (pl.col("purchased") == 1))).height == 0
    assert (imp["ts"].dt.date() == imp["dt"]).all()
    search = imp["surface"] == "search"
    assert (imp.filter(search)["query"].str.len_chars() > 0).all() and imp.filter(~search)["query"].is_null().all()
    assert set(imp["surface"].unique()) == {"recommend", "search", "ad"}
    assert (items["price"] > 0).all() and (items["title"].str.len_chars() > 0).all()
    first = imp.group_by("user_id").agg(pl.col("ts").min())
    assert (users.join(first, on="user_id")["signup_ts"] <= users.join(first, on="user_id")["ts"]).all()


def test_new_users_arrive_during_the_window(frames):
    imp, users, _ = frames
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    new = users.filter(pl.col("signup_ts") >= start)
    assert 0.03 < new.height / users.height < 0.2
    first = imp.group_by("user_id").agg(pl.col("dt").min().alias("first_day")).join(new, on="user_id")
    assert first.height > 0 and (first["first_day"] > first["signup_ts"].dt.date()).all()


def test_requests_group_5_to_20_rows_with_positions(frames):
    imp, _, _ = frames
    req = imp.group_by("request_id").agg(
        pl.len().alias("n"), pl.col("position").sort().alias("pos"), pl.col("user_id").n_unique().alias("users"),
        pl.col("surface").n_unique().alias("surfaces"), pl.col("query").n_unique().alias("queries"))
    assert req["n"].min() >= 5 and req["n"].max() <= 20
    assert all(p == list(range(len(p))) for p in req["pos"].to_list())
    assert (req["users"] == 1).all() and (req["surfaces"] == 1).all() and (req["queries"] == 1).all()
    assert not imp.select(pl.struct("request_id", "item_id").is_duplicated().any()).item()  # a list shows an item once


def test_deterministic_for_a_seed(tmp_path):
    args = {"days": 2, "impressions_per_day": 300, "users": 50, "items": 30, "start_date": "2026-03-01"}
    generate(tmp_path / "a", seed=1, **args)
    generate(tmp_path / "b", seed=1, **args)
    generate(tmp_path / "c", seed=2, **args)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a" / "items.parquet").read_bytes() != (tmp_path / "c" / "items.parquet").read_bytes()


def test_default_start_ends_yesterday(tmp_path):
    out = generate(tmp_path / "x", days=2, impressions_per_day=20, users=5, items=5, seed=0)
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    assert out["dates"][-1] == yesterday.isoformat() and len(out["dates"]) == 2


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ConfigError, match="must all be >= 1"):
        generate(tmp_path / "x", days=0, impressions_per_day=10, users=5, items=5, seed=0)


def test_query_words_drive_search_clicks(frames):
    imp, _, items = frames
    s = imp.filter(pl.col("surface") == "search").join(items.select("item_id", "title"), on="item_id")
    overlap = [len(set(q.split()) & set(t.lower().split())) for q, t in zip(s["query"], s["title"])]
    s = s.with_columns(pl.Series("overlap", overlap))
    rates = s.group_by(pl.col("overlap") > 1).agg(pl.col("clicked").mean()).sort("overlap")["clicked"].to_list()
    assert rates[1] > 2 * rates[0]


def test_position_bias_and_funnel_rates(frames):
    imp, _, _ = frames
    top = imp.filter(pl.col("position") == 0)["clicked"].mean()
    deep = imp.filter(pl.col("position") >= 10)["clicked"].mean()
    assert top > 1.5 * deep
    ctr, cart, buy = (imp[c].mean() for c in ("clicked", "carted", "purchased"))
    assert 0.03 < ctr < 0.25 and 0 < buy < cart < ctr


@pytest.fixture(scope="module")
def mid_landing(tmp_path_factory):
    """10 days x 6000 impressions: enough rows per (user, category) for counting estimates to be stable."""
    out = tmp_path_factory.mktemp("mid") / "landing"
    generate(out, days=10, impressions_per_day=6000, users=500, items=400, seed=2, start_date="2026-01-01")
    imp = pl.read_parquet(out / "impressions" / "*" / "*.parquet", hive_partitioning=True)
    return imp.join(pl.read_parquet(out / "items.parquet").select("item_id", "category"), on="item_id")


def test_taste_beats_popularity(mid_landing):
    """Popularity lifted by a per-(user, category) CTR from days 1-9 ranks day 10 clicks clearly better than
    popularity alone: the generator has personal structure a model can learn (seeds 1-4 gave +0.04..+0.12)."""
    imp = mid_landing
    last = dt.date(2026, 1, 10)
    train, test = imp.filter(pl.col("dt") < last), imp.filter(pl.col("dt") == last)
    prior = train["clicked"].mean()
    pop = train.group_by("item_id").agg(((pl.col("clicked").sum() + 20 * prior) / (pl.len() + 20)).alias("p"))
    taste = train.group_by("user_id", "category").agg(
        ((pl.col("clicked").sum() + 5 * prior) / (pl.len() + 5)).alias("t"))
    test = test.join(pop, on="item_id", how="left").join(taste, on=["user_id", "category"], how="left")
    test = test.with_columns(pl.col("p").fill_null(prior), pl.col("t").fill_null(prior))
    y, p, t = test["clicked"].to_numpy(), test["p"].to_numpy(), test["t"].to_numpy()
    auc_pop, auc_both = _auc(y, p), _auc(y, p * t / prior)
    assert auc_pop > 0.53  # popularity is real
    assert auc_both > auc_pop + 0.04, (auc_both, auc_pop)


def test_purchase_drivers_differ_from_click(frames):
    """Price relative to the category drives purchase given click much more than click itself."""
    imp, _, items = frames
    items = items.with_columns((pl.col("price") / pl.col("price").median().over("category")).log().alias("rel"))
    imp = imp.join(items.select("item_id", "rel"), on="item_id")
    cheap = pl.col("rel") < 0
    clicked = imp.filter(pl.col("clicked") == 1)
    cvr = clicked.group_by(cheap).agg(pl.col("purchased").mean()).sort("rel")["purchased"].to_list()
    ctr = imp.group_by(cheap).agg(pl.col("clicked").mean()).sort("rel")["clicked"].to_list()
    assert cvr[1] / cvr[0] > ctr[1] / ctr[0] > 0.9


def test_defaults_write_what_earlier_versions_wrote(tmp_path):
    """The long-tail and catalogue settings draw from their own generator: off, the data is unchanged (digests
    taken from the generator before those settings existed)."""
    import hashlib

    generate(tmp_path / "x", days=3, impressions_per_day=500, users=60, items=40, seed=3, start_date="2026-03-01")
    want = {"users.parquet": "dc13ce2fc64f5dd9", "items.parquet": "e78cc591b9bdfedc",
            "impressions/dt=2026-03-03/part-0.parquet": "ce22a9afae75c950"}
    got = {f: hashlib.sha256(pl.read_parquet(tmp_path / "x" / f).write_csv().encode()).hexdigest()[:16] for f in want}
    assert got == want


def _unseen_query_share(landing) -> float:
    imp = pl.read_parquet(landing / "impressions" / "*" / "*.parquet", hive_partitioning=True)
    q = imp.filter(pl.col("surface") == "search").select("dt", "query").unique()
    last = q["dt"].max()
    seen = set(q.filter(pl.col("dt") < last)["query"].to_list())
    today = q.filter(pl.col("dt") == last)["query"].to_list()
    return sum(t not in seen for t in today) / len(today)


def test_long_tail_brings_new_queries_and_reworded_titles(tmp_path):
    args = {"days": 4, "impressions_per_day": 3000, "users": 150, "items": 120, "seed": 5, "start_date": "2026-03-01"}
    generate(tmp_path / "plain", **args)
    generate(tmp_path / "tail", long_tail=0.6, **args)
    plain, tail = _unseen_query_share(tmp_path / "plain"), _unseen_query_share(tmp_path / "tail")
    assert tail > plain + 0.1  # every day brings query strings never seen before
    t0, t1 = (pl.read_parquet(tmp_path / n / "items.parquet")["title"] for n in ("plain", "tail"))
    assert 0.4 < (t0 != t1).mean() < 0.8  # about the long_tail share of titles said another way
    # Meaning is kept: queries that share a word with the item's plain title still click more.
    imp = pl.read_parquet(tmp_path / "tail" / "impressions" / "*" / "*.parquet", hive_partitioning=True)
    s = imp.filter(pl.col("surface") == "search").join(pl.read_parquet(tmp_path / "plain" / "items.parquet")
                                                       .select("item_id", "title"), on="item_id")
    hit = pl.Series([len(set(q.split()) & set(t.lower().split())) > 1 for q, t in zip(s["query"], s["title"])])
    assert s.filter(hit)["clicked"].mean() > 1.5 * s.filter(~hit)["clicked"].mean()


def test_new_items_appear_during_the_log_and_popularity_drifts(tmp_path):
    args = {"days": 6, "impressions_per_day": 3000, "users": 150, "items": 200, "seed": 5, "start_date": "2026-03-01"}
    generate(tmp_path / "moving", new_items=0.4, popularity_drift=0.8, **args)
    generate(tmp_path / "still", **args)
    shares = {}
    for name in ("moving", "still"):
        imp = pl.read_parquet(tmp_path / name / "impressions" / "*" / "*.parquet", hive_partitioning=True)
        items = pl.read_parquet(tmp_path / name / "items.parquet")
        assert imp["item_id"].is_in(items["item_id"].implode()).all()  # new items are in the snapshot
        first = imp.group_by("item_id").agg(pl.col("dt").min())
        shares[name] = (first["dt"] > imp["dt"].min()).mean()
        counts = imp.group_by("item_id", "dt").len().pivot("dt", index="item_id", values="len").fill_null(0)
        days = sorted(c for c in counts.columns if c != "item_id")
        shares[name + "_corr"] = np.corrcoef(counts[days[0]].to_numpy(), counts[days[-1]].to_numpy())[0, 1]
    assert shares["moving"] > shares["still"] + 0.2  # items first shown after day 0
    assert shares["moving_corr"] < shares["still_corr"] - 0.1  # popularity moved between the first and last day


def test_bad_long_tail_settings_are_named(tmp_path):
    with pytest.raises(ConfigError, match="long_tail"):
        generate(tmp_path / "x", days=2, impressions_per_day=10, users=5, items=5, seed=0, long_tail=2.0)


# 90k rows (about 7k clicks): enough for the calibration checks to tell the true purchase probability from one
# that forgets the clicks bought without a cart (about 200 purchases off, against a 4-sigma band of about 130).
ORACLE_ARGS = {"days": 3, "impressions_per_day": 30000, "users": 500, "items": 300, "seed": 4,
               "start_date": "2026-03-01", "popularity_drift": 0.3, "new_items": 0.2, "long_tail": 0.3}


@pytest.fixture(scope="module")
def oracle_pair(tmp_path_factory):
    """The same arguments twice, the second time with an oracle folder: (root, landing frame joined to oracle)."""
    root = tmp_path_factory.mktemp("oracle")
    generate(root / "plain", **ORACLE_ARGS)
    out = generate(root / "with", oracle_out=root / "oracle", **ORACLE_ARGS)
    assert out["oracle"] == str(root / "oracle")
    imp = pl.read_parquet(root / "with" / "impressions" / "*" / "*.parquet", hive_partitioning=True)
    orc = pl.read_parquet(root / "oracle" / "*" / "*.parquet", hive_partitioning=True)
    return root, imp, orc


def test_oracle_changes_no_landing_byte(oracle_pair):
    root = oracle_pair[0]
    files = sorted(p.relative_to(root / "plain") for p in (root / "plain").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(root / "with") for p in (root / "with").rglob("*") if p.is_file())
    assert all((root / "plain" / f).read_bytes() == (root / "with" / f).read_bytes() for f in files)
    assert sorted(p.name for p in (root / "oracle").iterdir()) == [f"dt=2026-03-0{d}" for d in (1, 2, 3)]
    assert all(sorted(p.name for p in d.iterdir()) == ["part-0.parquet"] for d in (root / "oracle").iterdir())


def test_oracle_rows_are_the_impressions_in_order(oracle_pair):
    _, imp, orc = oracle_pair
    assert orc.columns == ["event_id", "p_click", "p_cart_given_click", "p_purchase_given_click", "dt"]
    assert orc["event_id"].to_list() == imp["event_id"].to_list()
    assert (orc["dt"] == imp["dt"]).all()
    probs = orc.select(pl.exclude("event_id", "dt"))
    assert all(((probs[c] > 0) & (probs[c] < 1)).all() for c in probs.columns)


def _within_noise(y: np.ndarray, p: np.ndarray, z: float = 4.0) -> bool:
    """Observed count of y=1 within z binomial standard deviations of what the probabilities p predict."""
    return abs(y.sum() - p.sum()) <= z * np.sqrt((p * (1 - p)).sum())


def test_oracle_probabilities_are_the_ones_the_labels_were_drawn_with(oracle_pair):
    _, imp, orc = oracle_pair
    df = imp.join(orc, on="event_id")
    assert df.height == imp.height
    clicked = df.filter(pl.col("clicked") == 1)
    assert clicked["p_click"].mean() > 1.5 * df.filter(pl.col("clicked") == 0)["p_click"].mean()
    assert _within_noise(df["clicked"].to_numpy(), df["p_click"].to_numpy())
    # Given a click, the cart and purchase rates match; carted clicks were likelier carts than the others.
    assert _within_noise(clicked["carted"].to_numpy(), clicked["p_cart_given_click"].to_numpy())
    assert _within_noise(clicked["purchased"].to_numpy(), clicked["p_purchase_given_click"].to_numpy())
    by_cart = clicked.group_by("carted").agg(pl.col("p_cart_given_click").mean()).sort("carted")
    assert by_cart["p_cart_given_click"][1] > by_cart["p_cart_given_click"][0]
    # Over all impressions, P(purchase) = p_click * p_purchase_given_click; it ranks purchases best.
    p_buy = (df["p_click"] * df["p_purchase_given_click"]).to_numpy()
    assert _within_noise(df["purchased"].to_numpy(), p_buy)
    assert _auc(df["purchased"].to_numpy(), p_buy) > _auc(df["purchased"].to_numpy(), df["p_click"].to_numpy())


def test_oracle_inside_or_around_the_landing_is_refused(tmp_path):
    args = {**ORACLE_ARGS, "impressions_per_day": 50, "users": 10, "items": 10}
    for oracle in (tmp_path / "land", tmp_path / "land" / "oracle", tmp_path):
        with pytest.raises(ConfigError, match="outside the landing"):
            generate(tmp_path / "land", oracle_out=oracle, **args)
    assert not (tmp_path / "land").exists()


def test_cli_writes_the_oracle(tmp_path, capsys):
    import json

    from pipeline.cli import main

    argv = ["generate", "--out", str(tmp_path / "land"), "--days", "2", "--impressions-per-day", "100",
            "--users", "20", "--items", "15", "--start-date", "2026-03-01", "--oracle-out", str(tmp_path / "orc")]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["oracle"] == str(tmp_path / "orc")
    assert pl.read_parquet(tmp_path / "orc" / "dt=2026-03-02" / "part-0.parquet").height == 100
    assert main([*argv[:-1], str(tmp_path / "land" / "x")]) == 2  # inside the landing: refused, named
    assert "outside the landing" in capsys.readouterr().err
