"""A small convolutional classifier for 28x28 grayscale images (the embedded Fashion-MNIST benchmark),
light enough to train on two CPU cores in about a minute per epoch of Fashion-MNIST."""
from torch import nn

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """Two strided conv layers (28 -> 14 -> 7), a ReLU embedding of ``width`` features (the penultimate
    features) and a linear classifier ``fc``."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, channels: int = 16, width: int = 128,
                 image_size: int = 28):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"SmallCNN needs an image size divisible by 4, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(2 * channels * (image_size // 4) ** 2, width), nn.ReLU(inplace=True))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.embed(self.features(x)))
