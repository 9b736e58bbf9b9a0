"""What a user runs: train, evaluate, validate, bench, demo. Each job drives runners through the
one clip-scoring loop (``clip_loop``) and leaves printing to the CLI. Modules are imported on
demand, so `bench --onnx` never imports the training code (or torch)."""
