"""Training the DiffAgent selector LLM: examples from creators' images, LoRA SFT, RRHF, GGUF export."""
