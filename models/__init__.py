"""models: architectures built by name, pretrained-weight loading, the model bundle, the shipped default."""
