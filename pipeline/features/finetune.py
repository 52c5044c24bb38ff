"""`text.finetune=contrastive`: adapt the text encoder to the shop's own clicks before features are embedded.

Pairs come from the train window only (no valid/test rows, so no leakage into the splits a model is judged on):
- (query, clicked title) from search rows with a click;
- (title, co-clicked title): two different titles clicked by the same user on the same day, in click order.
At most `text.finetune_pairs` pairs (a `text.finetune_coclick_share` of them co-clicks at most, the rest
queries: the query pairs carry the search signal, co-clicks mostly shared taste), deduplicated. A held-out
share (`text.finetune_heldout`, split by anchor text so held-out anchors were never trained on) measures
recall@k before and after. The loss is the multiple-negatives ranking loss (in-batch negatives: each anchor's
positive against the other positives of its batch; scale 20 on cosine similarity, as sentence-transformers).
With `text.finetune_hard_negatives`, a query pair also brings a hard negative: the title shown highest in the
same search request and not clicked (same category, rejected on its words), added to the batch's candidates.
Only the top `text.finetune_layers` transformer layers train; the embeddings (half of MiniLM's weights: weight
decay would otherwise move the rows of the many words the pairs never contain) and lower layers stay frozen,
so autograd keeps nothing below the first trained layer and a step costs a fraction of a full one.

`ensure_encoder` reuses the newest fine-tuned encoder of the same base model and token limit under
`<home>/text_encoders/` while it is younger than `text.finetune_every_days`, so most nights cost nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.config import TextConfig
from pipeline.errors import FeatureError
from pipeline.features.text import ENCODER_INFO, cut, load_encoder, mean_pool, save_encoder, text_hash

log = logging.getLogger(__name__)
SCALE = 20.0  # MNRL: cosine similarities times this are the logits


def click_pairs(train: pl.DataFrame, tcfg: TextConfig, seed: int = 0) -> dict[str, Any]:
    """Train-window raw rows (impressions joined with items) -> {"query": [(query, title)], "coclick":
    [(title, title)], "negatives": {(query, title): title}}: pairs deduplicated, capped together at
    `tcfg.finetune_pairs`, in a seeded random order; a query pair's hard negative (with
    `tcfg.finetune_hard_negatives` and request_id / position columns) is the highest-shown unclicked title of
    one of its requests (the first such request in (query, title, negative) order)."""
    clicked = train.filter(pl.col("clicked") == 1)
    searched = clicked.filter(pl.col("query").is_not_null() & (pl.col("query").str.len_chars() > 0))
    hard = tcfg.finetune_hard_negatives and {"request_id", "position"} <= set(train.columns)
    if hard:  # per clicked search row: the unclicked title other than its own shown highest in its request
        skipped = train.filter((pl.col("clicked") == 0) & pl.col("title").is_not_null()).select(
            "request_id", pl.col("position").alias("neg_pos"), pl.col("title").alias("neg"))
        searched = searched.with_row_index("_row")
        negs = (searched.select("_row", "request_id", "title").join(skipped, on="request_id")
                .filter(pl.col("neg") != pl.col("title")).sort("_row", "neg_pos", "neg")
                .group_by("_row", maintain_order=True).agg(pl.col("neg").first()))
        searched = searched.join(negs, on="_row", how="left")
    else:
        searched = searched.with_columns(pl.lit(None, pl.String).alias("neg"))
    q = (searched.select("query", "title", "neg").sort("query", "title", "neg", nulls_last=True)
         .unique(["query", "title"], keep="first", maintain_order=True))
    order = clicked.sort("user_id", "ts").select("user_id", pl.col("ts").dt.date().alias("day"), "title")
    nxt = order.with_columns(pl.col("title").shift(-1).over("user_id", "day").alias("next"))
    co = (nxt.filter(pl.col("next").is_not_null() & (pl.col("next") != pl.col("title")))
          .select("title", "next").unique().sort("title", "next"))
    rng = np.random.default_rng(seed)
    q_rows = [q.row(i) for i in rng.permutation(q.height)]
    co_pairs = [co.row(i) for i in rng.permutation(co.height)]
    n_co = min(len(co_pairs), int(tcfg.finetune_pairs * tcfg.finetune_coclick_share))
    n_q = min(len(q_rows), tcfg.finetune_pairs - n_co)
    n_co = min(len(co_pairs), tcfg.finetune_pairs - n_q)  # queries short: co-clicks fill the rest
    cap = tcfg.max_chars
    query = [(cut(a, cap), cut(b, cap)) for a, b, _ in q_rows[:n_q]]
    negatives = {p: cut(n, cap) for p, (_, _, n) in zip(query, q_rows[:n_q]) if n}
    return {"query": query, "coclick": [(cut(a, cap), cut(b, cap)) for a, b in co_pairs[:n_co]],
            "negatives": negatives}


def split_heldout(pairs: list[tuple[str, str]], share: float) -> tuple[list, list]:
    """(train, heldout) by anchor-text hash: every pair of an anchor falls on the same side."""
    cut_at = int(share * 2**64)
    held = [p for p in pairs if text_hash(p[0]) < cut_at]
    return [p for p in pairs if text_hash(p[0]) >= cut_at], held


def recall_at_k(anchors: np.ndarray, positives: np.ndarray, k: int) -> float:
    """anchors, positives float [n, H] (unit rows; positive i belongs to anchor i): share of anchors whose own
    positive is among the k most similar of all n positives (ties counted against it)."""
    if len(anchors) == 0:
        return float("nan")
    sims = anchors @ positives.T  # [n, n]
    own = np.diag(sims)
    rank = (sims > own[:, None]).sum(1) + (sims == own[:, None]).sum(1) - 1  # others at least as close
    return float((rank < k).mean())


def _encode(tokenizer: Any, model: Any, texts: list[str], tcfg: TextConfig, grad: bool) -> Any:
    """Unit vectors [len(texts), H] (a torch tensor; with autograd when `grad`)."""
    import torch

    device = next(model.parameters()).device
    enc = tokenizer(texts, padding=True, truncation=True, max_length=tcfg.max_length, return_tensors="pt").to(device)
    with torch.set_grad_enabled(grad), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        hidden = model(**enc).last_hidden_state
    return mean_pool(hidden.float(), enc["attention_mask"])


def _recall(tokenizer: Any, model: Any, pairs: list[tuple[str, str]], tcfg: TextConfig) -> float:
    import torch

    model.eval()
    bs = tcfg.batch_size
    with torch.inference_mode():
        vecs = [torch.cat([_encode(tokenizer, model, [p[j] for p in pairs[s:s + bs]], tcfg, False)
                           for s in range(0, len(pairs), bs)]).cpu().numpy() for j in (0, 1)] if pairs else [[], []]
    return recall_at_k(np.asarray(vecs[0]), np.asarray(vecs[1]), tcfg.finetune_recall_k)


def mnrl_loss(a: Any, b: Any) -> Any:
    """Multiple-negatives ranking loss: a [B, H], b [B + N, H] unit vectors, b[i] the positive of a[i], every
    other row of b (the batch's other positives, then N hard negatives) a negative of it -> scalar."""
    import torch

    logits = SCALE * a @ b.T
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(a), device=a.device))


def train_contrastive(tcfg: TextConfig, pairs: list[tuple[str, str]], seed: int = 0,
                      encoder: tuple[Any, Any] | None = None,
                      negatives: dict[tuple[str, str], str] | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Fine-tune the encoder's top `text.finetune_layers` transformer layers on `pairs` with MNRL, a pair's hard
    negative from `negatives` joining its batch's candidates -> (tokenizer, model, {"steps", "seconds",
    "loss"})."""
    import torch

    from pipeline.models.text_tower import transformer_layers

    tokenizer, model = encoder or load_encoder(tcfg)
    torch.manual_seed(seed)
    for p in model.parameters():  # only the top layers learn: autograd then stops below the first of them
        p.requires_grad_(False)
    for layer in transformer_layers(model)[-tcfg.finetune_layers:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tcfg.finetune_lr)
    negatives = negatives or {}
    rng, bs = np.random.default_rng(seed), tcfg.finetune_batch_size
    steps, losses, start, shown = 0, [], time.monotonic(), time.monotonic()
    n_steps = tcfg.finetune_epochs * (len(pairs) // bs)
    model.train()
    for _ in range(tcfg.finetune_epochs):
        order = rng.permutation(len(pairs))
        for s in range(0, len(order) - bs + 1, bs):  # full batches only: every anchor has bs - 1 negatives
            batch = [pairs[i] for i in order[s:s + bs]]
            cands = [p[1] for p in batch] + [negatives[p] for p in batch if p in negatives]
            loss = mnrl_loss(_encode(tokenizer, model, [p[0] for p in batch], tcfg, True),
                             _encode(tokenizer, model, cands, tcfg, True))
            if not math.isfinite(float(loss.detach())):
                raise FeatureError(f"text.finetune=contrastive: non-finite loss at step {steps}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps, losses = steps + 1, [*losses, float(loss.detach())]
            if time.monotonic() - shown > 10 or steps == n_steps:
                shown = time.monotonic()
                print(f"text: fine-tune step {steps}/{n_steps} loss {np.mean(losses[-20:]):.4f}",
                      file=sys.stderr, flush=True)
    model.eval()
    return tokenizer, model, {"steps": steps, "seconds": time.monotonic() - start,
                              "loss": float(np.mean(losses[-20:])) if losses else None}


def finetune(tcfg: TextConfig, train: pl.DataFrame, out: Path, date: dt.date, seed: int = 0) -> dict[str, Any]:
    """Pairs of `train`, held-out recall@k of the frozen encoder, fine-tuning, recall@k after; the encoder
    is saved to `out` (pipeline.features.text.save_encoder). Returns its encoder.json."""
    groups = click_pairs(train, tcfg, seed)
    all_pairs = groups["query"] + groups["coclick"]
    fit_pairs, held = split_heldout(all_pairs, tcfg.finetune_heldout)
    if len(fit_pairs) < tcfg.finetune_batch_size:
        raise FeatureError(f"text.finetune=contrastive: the train window gives {len(fit_pairs)} training pairs, "
                           f"fewer than one batch (text.finetune_batch_size={tcfg.finetune_batch_size})")
    tokenizer, model = load_encoder(tcfg)
    before = _recall(tokenizer, model, held, tcfg)
    tokenizer, model, fit = train_contrastive(tcfg, fit_pairs, seed, (tokenizer, model), groups["negatives"])
    after = _recall(tokenizer, model, held, tcfg)
    k = tcfg.finetune_recall_k
    log.info("text fine-tune: held-out recall@%d %.3f -> %.3f on %d pairs", k, before, after, len(held))
    info = {"base": tcfg.model, "max_length": tcfg.max_length, "trained_on": date.isoformat(),
            "pairs": {"query_click": len(groups["query"]), "coclick": len(groups["coclick"]),
                      "train": len(fit_pairs), "heldout": len(held), "hard_negatives": len(groups["negatives"]),
                      "coclick_share": tcfg.finetune_coclick_share},
            "recall": {"k": k, "frozen": before, "tuned": after, "gain": after - before},
            "fit": {**fit, "lr": tcfg.finetune_lr, "epochs": tcfg.finetune_epochs, "layers": tcfg.finetune_layers,
                    "batch_size": tcfg.finetune_batch_size}}
    return save_encoder(tokenizer, model, out, info)


def latest_encoder(folder: Path, tcfg: TextConfig, date: dt.date) -> Path | None:
    """Newest encoder under `folder` of the same base model and token limit, trained on a day in
    [date - finetune_every_days, date] (never one fitted on days after `date`); None when there is none."""
    import json

    found = []
    for info_path in folder.glob(f"*/{ENCODER_INFO}"):
        if info_path.parent.name.startswith("."):  # a temporary of a write still under way
            continue
        info = json.loads(info_path.read_text())
        day = dt.date.fromisoformat(info["trained_on"])
        if (info["base"] == tcfg.model and info["max_length"] == tcfg.max_length
                and date - dt.timedelta(days=tcfg.finetune_every_days) <= day <= date
                and tcfg.finetune_every_days > 0):
            found.append((day, info_path.parent))
    return max(found)[1] if found else None


def ensure_encoder(tcfg: TextConfig, encoders: Path, train: pl.DataFrame, date: dt.date, seed: int = 0) -> Path:
    """The fine-tuned encoder folder for a run of `date`: reused while young enough, else fitted now."""
    reuse = latest_encoder(encoders, tcfg, date)
    if reuse is not None:
        log.info("text fine-tune: reusing %s", reuse)
        return reuse
    import uuid

    scratch = encoders / f"{date.isoformat()}-new-{uuid.uuid4().hex[:8]}"  # two runs fitting at once do not collide
    info = finetune(tcfg, train, scratch, date, seed)
    final = encoders / f"{date.isoformat()}-{info['version']}"
    try:
        scratch.rename(final)
    except OSError:  # the same weights again (same data and seed), already there: keep that one
        import shutil

        shutil.rmtree(scratch)
    return final


def run_encoder(tcfg: TextConfig, encoders: Path, train: pl.DataFrame, date: dt.date, seed: int = 0) -> TextConfig:
    """The text settings a run of `date` embeds with: `tcfg` itself, or with `text.finetune=contrastive` the
    same settings with `model` = the fine-tuned encoder folder (`ensure_encoder`)."""
    import dataclasses

    if tcfg.finetune != "contrastive":
        return tcfg
    return dataclasses.replace(tcfg, model=str(ensure_encoder(tcfg, encoders, train, date, seed)))


def joint_inputs(inputs: Any, run_dir: Path, tcfg: TextConfig) -> Any:
    """`inputs` (an InputSpec) with the transformer that embedded the run's text table and its token ids
    (state/text_tokens.npy), for a model whose top `text.finetune_layers` layers train with the multi-task loss
    (text.finetune=joint; pipeline.models.text_tower.JointTextEncoder)."""
    import dataclasses
    import json

    from pipeline.errors import ConfigError
    from pipeline.features.state import FeatureState
    from pipeline.models.text_tower import transformer_layers

    state_dir = Path(run_dir) / "features" / "state"
    tokens_path = state_dir / "text_tokens.npy"
    if not tokens_path.is_file():
        raise FeatureError(f"text.finetune=joint needs the token ids the features write with it: {tokens_path} is "
                           "missing (rebuild the features with text.finetune=joint)")
    tokens = np.load(tokens_path, allow_pickle=False)
    if tokens.shape[:2] != (2, inputs.text_rows):
        raise FeatureError(f"{tokens_path}: {tokens.shape[1]} token rows for a text table of {inputs.text_rows}")
    state_cfg = FeatureState.load(state_dir).text_cfg  # the encoder the table was embedded with
    _, model = load_encoder(state_cfg, device="cpu")
    n_layers = len(transformer_layers(model))
    if tcfg.finetune_layers > n_layers:
        raise ConfigError(f"text.finetune_layers={tcfg.finetune_layers} exceeds the {n_layers} layers of "
                          f"text.model={tcfg.model!r}")
    info = {"config": json.loads(model.config.to_json_string()), "layers": tcfg.finetune_layers,
            "lr": tcfg.finetune_lr, "max_length": int(tokens.shape[2]), "base": state_cfg.model}
    return dataclasses.replace(inputs, text_encoder=info, text_tokens=tokens, text_encoder_model=model.train())
