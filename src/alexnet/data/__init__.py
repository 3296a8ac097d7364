"""Data sets and the input pipeline: sources (torchvision tensors, Debian's Fashion-MNIST, image folders), decoding,
batched GPU/CPU augmentation, held-out validation splits."""
