"""Supervised training of a classifier on a labelled image dataset (cross-entropy, Adam), seeded."""
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

__all__ = ["train_classifier", "accuracy"]


def train_classifier(model: nn.Module, dataset: Dataset, epochs: int = 2, batch_size: int = 128, lr: float = 1e-3,
                     weight_decay: float = 0.0, seed: int = 0, device: str = "cpu",
                     progress: bool = True) -> List[Dict[str, float]]:
    """Train ``model`` in place; returns the per-epoch mean loss and training accuracy. The model is left
    in eval mode."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=gen, drop_last=False)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    for epoch in range(epochs):
        total, correct, seen = 0.0, 0, 0
        for x, y in tqdm(loader, desc=f"train epoch {epoch + 1}/{epochs}", disable=not progress, leave=False):
            x, y = x.to(device), torch.as_tensor(y).to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        history.append({"epoch": epoch + 1, "loss": total / seen, "train_accuracy": correct / seen})
    model.eval()
    return history


@torch.no_grad()
def accuracy(logits, labels) -> float:
    """Top-1 accuracy of logits ``(N, C)`` against integer labels ``(N,)``."""
    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
    if logits.shape[0] != labels.shape[0] or logits.shape[0] == 0:
        raise ValueError(f"accuracy: {logits.shape[0]} logits rows for {labels.shape[0]} labels")
    return float((logits.argmax(1) == labels).double().mean())
