"""Datasets: classification (digits, CIFAR, ImageFolder)."""
