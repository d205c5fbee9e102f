"""Model construction (timm ViTs and the convolutional tokenizer): torch, no Lightning."""
