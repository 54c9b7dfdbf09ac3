// Anchor translation unit: the precompiled <torch/torch.h> is built once here and reused.
