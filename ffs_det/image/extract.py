"""Penultimate features and logits of a classifier over a dataset, streamed into a feature store."""
import contextlib
from typing import Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..density.inputs import final_linear
from .feature_store import FeatureStore, FeatureStoreWriter

__all__ = ["FeatureExtractor", "extract_to_store"]


class FeatureExtractor(nn.Module):
    """``x -> (features, logits)``: the input of the classifier's final linear layer (read by a forward
    hook that is attached only during the call) and the classifier's output, checked to be that layer's
    output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.head = final_linear(model)

    def forward(self, x: torch.Tensor):
        seen = {}

        def hook(module, args, output):
            seen["features"], seen["head_out"] = args[0], output

        handle = self.head.register_forward_hook(hook)
        try:
            logits = self.model(x)
        finally:
            handle.remove()
        if "features" not in seen:
            raise ValueError(f"{type(self.model).__name__}: the final linear layer was not called in forward()")
        feats, head_out = seen["features"], seen["head_out"]
        if head_out.shape != logits.shape or not torch.equal(head_out, logits):
            raise ValueError(f"{type(self.model).__name__}: its output is not the output of its last nn.Linear "
                             f"layer, so the penultimate features cannot be read from that layer")
        return feats.flatten(1), logits


@torch.no_grad()
def extract_to_store(model: nn.Module, dataset: Dataset, path: str, batch_size: int = 256, num_workers: int = 0,
                     device: str = "cpu", info: Optional[dict] = None, progress: bool = True,
                     desc: Optional[str] = None) -> FeatureStore:
    """Run ``model`` (in eval mode) over ``dataset`` in order and write ``features`` (float32 ``(N, D)``),
    ``logits`` (float32 ``(N, C)``) and ``labels`` (int64 ``(N,)``) to a new store at ``path``, one batch
    at a time; returns the opened store."""
    n = len(dataset)
    if n == 0:
        raise ValueError(f"cannot extract features for {path}: the dataset is empty")
    extractor = FeatureExtractor(model).to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=n, desc=desc or f"features -> {path}", unit="img", disable=not progress))
        writer = None
        for batch in loader:
            if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                raise ValueError(f"{path}: dataset items must be (image tensor, label) pairs")
            x, y = batch[0].to(device), batch[1]
            feats, logits = extractor(x)
            if writer is None:
                columns = {"features": ((feats.shape[1],), "float32"), "logits": ((logits.shape[1],), "float32"),
                           "labels": ((), "int64")}
                writer = stack.enter_context(FeatureStoreWriter(path, n, columns, info))
            writer.append(features=feats.float().cpu(), logits=logits.float().cpu(), labels=torch.as_tensor(y).long())
            bar.update(x.shape[0])
    return FeatureStore(path)
