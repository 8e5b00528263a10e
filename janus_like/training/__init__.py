"""Training: `janus-like train CONFIG.yaml` on accelerate (one CPU to many GPUs), Janus stage presets,
task-mixed JSONL data with sequence packing, atomic checkpoints with exact resume."""
