"""Shared layers of the model zoo: feature input, parallel MLPs (experts/towers), gates, the base model.

Shapes: B = batch, C = categorical features, D = embedding dim, n = parallel members (experts or tasks),
h = hidden width. Parallel members keep their own weights but run as one batched matmul ([n, B, h]), which
is what makes four experts or four towers cost about one large layer instead of four small ones.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.models.blocks import CrossNet, ParallelBatchNorm, TargetAttention, fold_dropped_bias

if TYPE_CHECKING:
    from pipeline.config import ModelConfig
    from pipeline.features.dataset import InputSpec


SPARSE_MIN_ROWS = 4096  # features with at least this many ids get the sparse table
ID_MIN_ROWS = 100  # id-like vocabularies (users, items, shops, brands): the ones id dropout applies to


class FeatureInput(nn.Module):
    """batch -> x [B, C*D + F + X*P (+ G*D with a behaviour sequence of G fields)]. Categorical features are split by vocabulary size into two tables, each
    one lookup per batch (row offsets per feature): `embedding` for large id spaces (users, items) with sparse
    gradients, so the optimiser touches only the batch's rows, and `small_embedding` for short vocabularies with
    dense gradients (a sparse update there would cost more in coalescing than the whole table). The text table
    is a frozen buffer [n_texts, text_dim], projected by a Linear to P = `text_proj_dim`.

    `id_dropout` p: in training, each id of an id-like feature (vocabulary >= ID_MIN_ROWS) is replaced by the
    unknown index 0 with probability p, so row 0 is trained as "an id not seen in training" and a new user or
    item at serving gets that learned row instead of its random initial value.

    With a behaviour sequence (`spec.seq_columns`, batch key `seq` int64 [B, G*S]: G blocks of S positions, one
    per field of `spec.seq_vocabs`, 0 = padding), block g's ids are rows of the embedding of feature
    `spec.seq_vocabs[g]` (the candidate's own table: a clicked item and a candidate item share a vector). Each
    position is its G rows side by side [G*D], pooled by `TargetAttention` against the candidate's G rows; a
    position is padding where all its fields are 0."""

    def __init__(self, spec: InputSpec, dim: int, id_dropout: float = 0.0):
        super().__init__()
        card = list(spec.cardinalities)
        self.id_dropout = id_dropout
        ids = [j for j, c in enumerate(card) if c >= ID_MIN_ROWS]
        self.register_buffer("id_cols", torch.tensor(ids, dtype=torch.int64), persistent=False)
        self.n_id_cols = len(ids)
        big = [j for j, c in enumerate(card) if c >= SPARSE_MIN_ROWS]
        small = [j for j, c in enumerate(card) if c < SPARSE_MIN_ROWS]
        self.embedding, self.small_embedding = _table(card, big, dim, True), _table(card, small, dim, False)
        for name, cols in (("big", big), ("small", small)):
            sizes = torch.tensor([card[j] for j in cols], dtype=torch.int64)
            self.register_buffer(f"{name}_cols", torch.tensor(cols, dtype=torch.int64), persistent=False)
            self.register_buffer(f"{name}_offsets", torch.cumsum(sizes, 0) - sizes, persistent=False)
        self.n_text = len(spec.text_columns)
        self.text_encoder = None
        if self.n_text and spec.text_encoder:  # text.finetune=joint: vectors from the transformer, per batch
            from pipeline.models.text_tower import JointTextEncoder

            self.text_encoder = JointTextEncoder(spec)
        if self.n_text:
            table = spec.text_table if spec.text_table is not None else torch.zeros(spec.text_rows, spec.text_dim)
            self.register_buffer("text_table", torch.as_tensor(table, dtype=torch.float32).clone())
            self.text_proj = nn.Linear(spec.text_dim, spec.text_proj_dim)
        self.out_dim = len(card) * dim + len(spec.num_names) + self.n_text * spec.text_proj_dim
        self.last_rows: list[torch.Tensor] = []
        self.attention = None
        if spec.seq_columns:
            self.seq_len = len(spec.seq_columns) // len(spec.seq_vocabs)
            self.seq_fields = []  # per field: (its categorical column, in the sparse table?, its first row there)
            for name in spec.seq_vocabs:
                j = spec.cat_names.index(name)
                same = big if card[j] >= SPARSE_MIN_ROWS else small
                self.seq_fields.append((j, card[j] >= SPARSE_MIN_ROWS, sum(card[i] for i in same[:same.index(j)])))
            self.attention = TargetAttention(len(spec.seq_vocabs) * dim)
            self.out_dim += len(spec.seq_vocabs) * dim

    def tables(self) -> list[nn.Embedding]:
        return [t for t in (self.embedding, self.small_embedding) if t is not None]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cat = batch["cat"]
        if self.training and self.id_dropout > 0 and self.n_id_cols:
            # Draw only for the id-like columns: the CPU generator is most of this step's cost (peer-config
            # MMoE: 190 -> 115 us a 2048-row batch against a draw for every column and a masked fill).
            keep = torch.rand(cat.shape[0], self.n_id_cols, device=cat.device) >= self.id_dropout
            cat = cat.index_copy(1, self.id_cols, cat.index_select(1, self.id_cols) * keep)
        self.last_rows = []
        for table, cols, offsets in ((self.embedding, self.big_cols, self.big_offsets),
                                     (self.small_embedding, self.small_cols, self.small_offsets)):
            if table is None:
                continue
            ids = cat.index_select(1, cols) + offsets  # [B, C_table]
            if table.sparse:
                self.last_rows.append(table(ids))  # [B, C_table, D]
            else:  # index_select's backward (index_add) is ~2x faster on CPU than embedding's dense backward
                self.last_rows.append(table.weight.index_select(0, ids.reshape(-1)).view(*ids.shape, -1))
        parts = [r.flatten(1) for r in self.last_rows] + [batch["num"]]
        if self.n_text:
            if self.text_encoder is None:
                # A serving batch may bring a longer table (the model's rows, then texts embedded at scoring time).
                table = batch.get("text_table")
                table = self.text_table if table is None else table
                vecs = table[batch["text"]]
            else:  # joint: rows past its token table (texts new at serving) get the zero row, as before
                idx = batch["text"]
                vecs = self.text_encoder(torch.where(idx < self.text_encoder.tokens.shape[1], idx, 0))
            parts.append(self.text_proj(vecs).flatten(1))  # [B, X*P]
        if self.attention is not None:
            parts.append(self._sequence(batch["seq"], cat))
        return torch.cat(parts, 1)

    def _sequence(self, seq: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        """seq [B, G*S] ids (0 = padding), cat [B, C] (the candidate's ids) -> attention-pooled [B, G*D]."""
        s, rows = self.seq_len, []
        for g, (j, big, offset) in enumerate(self.seq_fields):
            table = self.embedding if big else self.small_embedding
            ids = torch.cat([cat[:, j:j + 1], seq[:, g * s:(g + 1) * s]], 1) + offset  # [B, 1 + S], one lookup
            rows.append(table(ids) if table.sparse
                        else table.weight.index_select(0, ids.reshape(-1)).view(*ids.shape, -1))
        rows = torch.cat(rows, -1)  # [B, 1 + S, G*D]: the candidate, then the clicks
        mask = (seq.view(seq.shape[0], len(self.seq_fields), s) > 0).any(1)  # [B, S]
        return self.attention(rows[:, 1:], rows[:, 0], mask)


def _table(card: list[int], cols: list[int], dim: int, sparse: bool) -> nn.Embedding | None:
    if not cols:
        return None
    table = nn.Embedding(sum(card[j] for j in cols), dim, sparse=sparse)
    nn.init.normal_(table.weight, std=0.01)  # small: ids start near-neutral (bench/train_bench.py --peer-config: +0.0015 AUC vs std 0.05)
    return table


class ParallelLinear(nn.Module):
    """n independent Linear(in, out). x [B, in] (shared input) or [n, B, in] -> [n, B, out].
    Each member is initialised like nn.Linear, independently, so experts start (and stay) different.
    `drop_bias()` removes the bias, for a layer whose output goes straight into BatchNorm (which subtracts the
    batch mean, so a bias there has no effect on the output and gets an exactly zero gradient)."""

    def __init__(self, n: int, d_in: int, d_out: int):
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)
        self.weight = nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound))
        self.bias: nn.Parameter | None = nn.Parameter(torch.empty(n, 1, d_out).uniform_(-bound, bound))

    def drop_bias(self) -> None:
        self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, d_in, d_out = self.weight.shape
        if x.dim() == 2:  # one matmul for all members: [B, in] @ [in, n*out]
            w = self.weight.permute(1, 0, 2).reshape(d_in, n * d_out)
            y = x @ w if self.bias is None else torch.addmm(self.bias.reshape(n * d_out), x, w)
            return y.view(x.shape[0], n, d_out).transpose(0, 1)
        return torch.bmm(x, self.weight) if self.bias is None else torch.baddbmm(self.bias, x, self.weight)

    def channels_first(self, x: torch.Tensor) -> torch.Tensor:
        """The shared-input map laid out the other way: x [B, in] -> W^T x^T [n*out, B] (member-major rows)."""
        n, d_in, d_out = self.weight.shape
        w = self.weight.transpose(1, 2).reshape(n * d_out, d_in)
        return w @ x.t() if self.bias is None else torch.addmm(self.bias.reshape(n * d_out, 1), w, x.t())


class ParallelMLP(nn.Module):
    """n MLPs with the same widths: Linear -> (BatchNorm) -> ReLU -> Dropout per hidden layer.
    [B, in] | [n, B, in] -> [n, B, h]. BatchNorm is off until `add_batch_norm()` (model.batch_norm)."""

    def __init__(self, n: int, d_in: int, hidden: tuple[int, ...], dropout: float):
        super().__init__()
        widths = (d_in, *hidden)
        self.layers = nn.ModuleList(ParallelLinear(n, a, b) for a, b in itertools.pairwise(widths))
        self.norms: nn.ModuleList | None = None
        self.dropout = dropout
        self.out_dim = widths[-1]

    def add_batch_norm(self) -> None:
        n = self.layers[0].weight.shape[0] if len(self.layers) else 0
        self.norms = nn.ModuleList(ParallelBatchNorm(n, layer.weight.shape[2]) for layer in self.layers)
        for layer in self.layers:
            layer.drop_bias()
        self.register_load_state_dict_pre_hook(self._fold_hook)

    def _fold_hook(self, module: nn.Module, state: dict, prefix: str, *_: object) -> None:
        fold_dropped_bias(state, prefix, [(f"layers.{i}", f"norms.{i}") for i in range(len(self.layers))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = self.activate(i, layer(x))
        return x

    def activate(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """What follows the i-th Linear: (BatchNorm, with add_batch_norm) -> ReLU -> Dropout. [n, B, h] -> same."""
        h = F.relu(h) if self.norms is None else self.norms[i](h, relu=True)
        return F.dropout(h, self.dropout, self.training)


class Towers(nn.Module):
    """One tower per task: ParallelMLP then a 1-unit output. [B, in] | [T, B, in] -> logits [T, B]."""

    def __init__(self, n: int, d_in: int, hidden: tuple[int, ...], dropout: float):
        super().__init__()
        self.mlp = ParallelMLP(n, d_in, hidden, dropout)
        self.out = ParallelLinear(n, self.mlp.out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(x)).squeeze(-1)


class Gates(nn.Module):
    """n softmax gates over E experts; no BatchNorm (a normalised gate input hides which expert a row needs).
    x [B, in] | [n, B, in] -> weights [n, B, E]. `names`: one per gate; `expert_names`: per gate, the labels of
    the experts it mixes (the same label = the same expert). With `record` on, keeps sums for diagnostics."""

    def __init__(self, n: int, d_in: int, experts: int, names: tuple[str, ...],
                 expert_names: tuple[tuple[str, ...], ...]):
        super().__init__()
        self.linear = ParallelLinear(n, d_in, experts)
        self.norm: ParallelBatchNorm | None = None
        self.names, self.expert_names = names, expert_names
        self.record = False
        self.reset_stats()

    def reset_stats(self) -> None:
        self.weight_sum: torch.Tensor | None = None
        self.entropy_sum: torch.Tensor | None = None
        self.rows = 0

    def add_batch_norm(self) -> None:
        """BatchNorm on the gate logits (not the gate input), as torch-rechub's gates: Linear -> BN -> softmax."""
        n, _, experts = self.linear.weight.shape
        self.norm = ParallelBatchNorm(n, experts)
        self.linear.drop_bias()
        self.register_load_state_dict_pre_hook(self._fold_hook)

    def _fold_hook(self, module: nn.Module, state: dict, prefix: str, *_: object) -> None:
        fold_dropped_bias(state, prefix, [("linear", "norm")])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            w = self._expert_major(x)
        else:
            z = self.linear(x)
            w = softmax(z if self.norm is None else self.norm(z), -1)
        if self.record:
            with torch.no_grad():
                ws, ent = w.float().sum(1), -(w.float() * torch.log(w.float() + 1e-12)).sum((1, 2))
                self.weight_sum = ws if self.weight_sum is None else self.weight_sum + ws
                self.entropy_sum = ent if self.entropy_sum is None else self.entropy_sum + ent
                self.rows += w.shape[1]
        return w

    def _expert_major(self, x: torch.Tensor) -> torch.Tensor:
        """The shared-input gates computed as [n*E, B] (W^T x^T), normalised and softmaxed over E with the batch as
        the contiguous inner dim, returned as a [n, B, E] view. In the [n, B, E] layout every elementwise op of the
        softmax (and BatchNorm's) runs over an inner dim of E = 2-16, which CPU kernels barely vectorise (peer-config
        MMoE: this gate's forward + backward 1.35 -> 0.83 ms per 2048-row batch)."""
        n, _, e = self.linear.weight.shape
        z = self.linear.channels_first(x)  # [n*E, B]
        if self.norm is not None:
            z = self.norm.channels_first(z)
        return softmax(z.view(n, e, x.shape[0]), 1).transpose(1, 2)


def mix(gates: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Gate-weighted sum of experts. gates [n, B, E]; experts [E, B, h] (shared by the n gates) or
    [n, E, B, h] (per gate) -> [n, B, h]. (Profiled on CPU: a batched matmul beat a loop of E multiply-adds,
    whose backward costs ~3x more elementwise passes.)"""
    if experts.dim() == 4:
        return torch.einsum("nbe,nebh->nbh", gates, experts)
    # One [n, E] @ [E, h] matmul per row, batch-major: the shared experts are already [B, E, h] in memory (a view of
    # ParallelLinear's output) and the gates are small enough to copy. einsum picks that layout itself only when
    # the gates come batch-major too.
    return torch.bmm(gates.transpose(0, 1).contiguous(), experts.transpose(0, 1)).transpose(0, 1)


def softmax(z: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over a short dim (the experts). torch.softmax's kernel is ~4x slower on CPU for dims of 2-16 than
    this exp/normalise, which autograd differentiates just as exactly."""
    z = torch.exp(z - z.amax(dim, keepdim=True).detach())
    return z / z.sum(dim, keepdim=True)


class MultiTaskModel(nn.Module):
    """Base of every architecture: Model(inputs, cfg, tasks); forward(batch) -> {task: logits [B]}.

    Subclasses implement `build(d_in)` and `heads(x [B, d_in]) -> {task: logits [B]}`, and keep their output
    layer as `self.towers` (a Towers whose member i is the logit of `self.tower_tasks[i]`, default `tasks`). `loss_tasks` are the tasks
    the trainer puts a loss on (ESMM trains ctcvr even when only ctr and cvr are asked for); forward returns
    logits for `tasks` and `loss_tasks`. `auxiliary_loss` adds an architecture's own term (AITM's calibrator)."""

    def __init__(self, inputs: InputSpec, cfg: ModelConfig, tasks: tuple[str, ...]):
        super().__init__()
        self.tasks = tuple(tasks)
        self.loss_tasks = self.tasks
        self.tower_tasks = self.tasks
        self.cfg = cfg
        self.features = FeatureInput(inputs, cfg.embedding_dim, cfg.id_dropout)
        self.cross = CrossNet(self.features.out_dim, cfg.cross_layers) if cfg.cross_layers else None
        self.build(self.features.out_dim)
        if cfg.batch_norm:  # every architecture's MLPs and gates, without each one wiring the option
            for m in list(self.modules()):
                if isinstance(m, (ParallelMLP, Gates)):
                    m.add_batch_norm()

    def build(self, d_in: int) -> None:
        raise AssertionError("subclasses define build()")

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise AssertionError("subclasses define heads()")

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.features(batch)
        if self.cross is not None:
            x = self.cross(x)
        return (self._compiled or self.heads)(x)

    _compiled = None

    def compile_heads(self) -> None:
        """torch.compile the dense part only: inductor cannot trace the sparse embedding gradients."""
        self._compiled = torch.compile(self.heads)

    def auxiliary_loss(self, logits: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return None

    def dense_embedding_gradients(self) -> None:
        """Give the large id table dense gradients (for DDP: NCCL cannot all-reduce sparse ones); the trainer
        then optimises it with Adam instead of SparseAdam."""
        if self.features.embedding is not None:
            self.features.embedding.sparse = False

    def param_groups(self) -> list[dict]:
        """Parameter groups with optimiser settings of their own (the jointly trained text encoder's low learning
        rate); the trainer keeps these parameters out of its default groups."""
        enc = self.features.text_encoder
        return enc.param_groups() if enc is not None else []

    def init_output_bias(self, rates: dict[str, float]) -> None:
        """Start each tower's logit at its task's base rate (train label rate on its sample space), so the first
        steps learn to rank instead of learning the mean. Tasks without a usable rate keep their random bias."""
        with torch.no_grad():
            for i, task in enumerate(self.tower_tasks):
                rate = rates.get(task)
                if rate is not None and 0.0 < rate < 1.0:
                    self.towers.out.bias[i].fill_(math.log(rate / (1.0 - rate)))

    def embedding_penalty(self) -> torch.Tensor:
        """Mean over the batch of the squared L2 norm of the embedding rows used in the last forward (only the
        rows in the batch: a penalty over the whole table would cost a full-table pass every step)."""
        rows = self.features.last_rows
        return sum(r.pow(2).sum() for r in rows) / rows[0].shape[0]

    @property
    def output_tasks(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.tasks + self.loss_tasks))
