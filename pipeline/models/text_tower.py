"""The jointly trained text encoder (text.finetune=joint): text rows -> vectors by the transformer itself.

Shapes: B = batch, X = text columns (title, query), U = distinct texts of the batch, L = tokens, H = hidden size.
Each step encodes only the batch's distinct texts (row 0, "no text", is the zero vector, like the frozen
table's row 0). The top `layers` transformer layers train, with their own learning rate (`param_groups`); the
embeddings and lower layers stay frozen, so autograd keeps no activations below the first trained layer.

Stored once: the trained transformer's weights live only in the model folder's `encoder/model.safetensors`
(pipeline.training.train._save_joint_encoder); `model.pt` holds the rest of the model and the token ids
(`stored_state` / `load_stored_state`). At serving, texts new to the model are tokenized with that folder's
tokenizer and encoded by the same transformer (`JointTextEncoder.extra_tokens`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from pipeline.features.dataset import InputSpec

CHUNK = 512  # texts per encoder call: bounds memory when a large eval batch holds many distinct texts


def _from_config(info: dict[str, Any]) -> Any:
    """An untrained transformer of the stored architecture (a loaded model's weights come from model.pt)."""
    from transformers import AutoConfig, AutoModel

    conf = dict(info["config"])
    return AutoModel.from_config(AutoConfig.for_model(conf.pop("model_type"), **conf))


def transformer_layers(model: Any) -> nn.ModuleList:
    """The stack of transformer blocks of a BERT-style encoder (`model.encoder.layer`)."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no encoder.layer stack: text.finetune=joint needs a BERT-style "
                        "encoder")
    return layers


class JointTextEncoder(nn.Module):
    """idx int64 [B, X] (rows of the run's text table) -> unit vectors float32 [B, X, H]. `tokens` (int32
    [2, n_texts, L]: input ids, attention mask) is a buffer, so model.pt carries it."""

    def __init__(self, spec: InputSpec):
        super().__init__()
        info = spec.text_encoder
        self.model = spec.text_encoder_model if spec.text_encoder_model is not None else _from_config(info)
        ids = spec.text_tokens  # [2, n_texts, L]; None when loading: model.pt fills the zeros
        if ids is None:
            ids = torch.zeros(2, spec.text_rows, info["max_length"], dtype=torch.int32)
        self.register_buffer("tokens", torch.as_tensor(ids, dtype=torch.int32).clone())
        self.lr = float(info["lr"])
        for p in self.model.parameters():
            p.requires_grad_(False)
        for layer in transformer_layers(self.model)[-int(info["layers"]):]:
            for p in layer.parameters():
                p.requires_grad_(True)

    @contextlib.contextmanager
    def extra_tokens(self, extra: torch.Tensor) -> Iterator[None]:
        """For the duration, rows n_texts.. of the token table are `extra` (int [2, n_extra, L]: ids and mask of
        texts new at serving, tokenized like the stored ones), so they are encoded as a training-time text is.
        Not thread-safe: the caller serialises requests."""
        stored = self.tokens
        self.tokens = torch.cat([stored, extra.to(stored.device, stored.dtype)], 1)
        try:
            yield
        finally:
            self.tokens = stored

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": self.lr,
                 "weight_decay": 0.0}]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        from pipeline.features.text import mean_pool

        uniq, inverse = torch.unique(idx, return_inverse=True)  # [U], [B, X]
        out = torch.zeros(len(uniq), self.model.config.hidden_size, device=idx.device)
        rows = uniq[uniq != 0]
        if len(rows):
            ids, mask = self.tokens[0, rows].long(), self.tokens[1, rows].long()
            width = max(1, int(mask.sum(1).max()))  # drop the padding every text of the batch has
            ids, mask = ids[:, :width], mask[:, :width]
            vecs = [mean_pool(self.model(input_ids=ids[s:s + CHUNK], attention_mask=mask[s:s + CHUNK])
                              .last_hidden_state.float(), mask[s:s + CHUNK]) for s in range(0, len(rows), CHUNK)]
            out = out.index_put((torch.nonzero(uniq != 0).squeeze(1),), torch.cat(vecs))
        return out[inverse]


def joint_encoders(model: nn.Module) -> dict[str, JointTextEncoder]:
    """{module name: encoder} of the jointly trained text encoders inside `model` (none, or one)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, JointTextEncoder)}


def stored_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` without the joint transformer's weights (stored once, in encoder/model.safetensors);
    the token ids stay."""
    skip = tuple(f"{name}.model." for name in joint_encoders(model))
    return {k: v for k, v in model.state_dict().items() if not (skip and k.startswith(skip))}


def load_stored_state(model: nn.Module, state: dict[str, torch.Tensor], encoder_dir: Path) -> None:
    """Load a `stored_state` into `model`: the transformer from `encoder_dir/model.safetensors`, the rest from
    `state`. Any other key missing or unexpected raises, as a strict load would (a model.pt written before the
    weights were stored once still has them: they load from it)."""
    from safetensors.torch import load_file

    from pipeline.errors import TrainingError

    encoders = joint_encoders(model)
    weights = Path(encoder_dir) / "model.safetensors"
    if encoders and not weights.is_file():
        raise TrainingError(f"{weights} is missing: a text.finetune=joint model keeps its encoder's weights there")
    for enc in encoders.values():
        lacking = enc.model.load_state_dict(load_file(str(weights)), strict=False).missing_keys
        if lacking:
            raise TrainingError(f"{weights} does not fit the model's encoder: missing {lacking[:5]}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    skip = tuple(f"{name}.model." for name in encoders)
    missing = [k for k in missing if not (skip and k.startswith(skip))]
    if missing or unexpected:
        raise TrainingError(f"model.pt does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
