"""The lecture's training code as the lecture wrote it: torchvision DataLoader with per-image
ToTensor + Normalize, batch 64, Adam lr 0.001, 2 epochs, then test accuracy.

It is the baseline the engine is measured against (benchmarks/time_to_accuracy.py) and checked
against (tests/test_engine.py), so it is kept verbatim apart from being wrapped in a function
with a subset option. It is deliberately NOT cnnlab's engine: it is the thing being compared.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.optim as optim
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms


class SimpleCNN(nn.Module):
    def __init__(self):
        super(SimpleCNN, self).__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = x.view(-1, 32 * 7 * 7)
        x = self.relu(self.fc1(x))
        x = self.fc2(x)
        return x


def run(data_dir: str, dataset: str = "mnist", epochs: int = 2, seed: int = 0, limit_train: int | None = None,
        limit_test: int | None = None, verbose: bool = True) -> float:
    """Train and test exactly as the lecture does; returns the test accuracy as a fraction."""
    torch.manual_seed(seed)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[dataset]
    train_dataset = cls(root=data_dir, train=True, download=False, transform=transform)
    test_dataset = cls(root=data_dir, train=False, download=False, transform=transform)
    if limit_train:
        train_dataset = Subset(train_dataset, range(limit_train))
    if limit_test:
        test_dataset = Subset(test_dataset, range(limit_test))
    train_loader = DataLoader(train_dataset, batch_size=64, shuffle=True)
    test_loader = DataLoader(test_dataset, batch_size=64, shuffle=False)

    model = SimpleCNN()
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.Adam(model.parameters(), lr=0.001)

    for epoch in range(epochs):
        model.train()
        running_loss = 0.0
        for images, labels in train_loader:
            optimizer.zero_grad()
            outputs = model(images)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
        if verbose:
            print(f"Epoch [{epoch + 1}/{epochs}], Loss: {running_loss / len(train_loader):.4f}")

    model.eval()
    correct = 0
    total = 0
    with torch.no_grad():
        for images, labels in test_loader:
            outputs = model(images)
            _, predicted = torch.max(outputs.data, 1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    if verbose:
        print(f"Test Accuracy: {100 * correct / total:.2f}%")
    return correct / total
