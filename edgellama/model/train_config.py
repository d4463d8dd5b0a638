"""Training settings, with their defaults (no torch here, so `--help` needs none)."""

from dataclasses import dataclass, field

from edgellama.errors import EdgeLlamaError

# The forward pass's precision: bfloat16 runs it under torch.autocast (about 1.5x a step on a CPU
# with AMX or AVX-512 BF16, more on a GPU) while the parameters, gradients and optimizer
# state stay float32, as in nanoGPT.
DTYPES = ("float32", "bfloat16")


@dataclass
class TrainConfig:
    data: str
    out: str = "ckpt.pt"
    tokenizer: str | None = None
    preset: str = "tiny"
    model_overrides: dict = field(default_factory=dict)  # any LlamaConfig field
    batch_size: int = 32
    grad_accum: int = 1
    max_iters: int = 1000
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_interval: int = 200
    eval_windows: int = 200
    val_fraction: float = 0.05
    segment: str = "auto"     # how the corpus is cut into documents (data.SEGMENTS)
    chat_format: str = ""     # the chat template the corpus's conversations use (chat_format.CHAT_FORMATS)
    seed: int = 1337
    device: str = "auto"
    dtype: str = "float32"    # the forward pass's precision (DTYPES); parameters and AdamW stay float32
    resume: bool = False

    def check_data(self):
        """Refuse a segmentation or chat format the corpus cannot be read with, before training."""
        from edgellama.model.chat_format import check_chat_format
        from edgellama.model.data import check_segment
        check_segment(self.segment)
        if self.chat_format:
            check_chat_format(self.chat_format)

    def check_schedule(self):
        """Refuse a run that ends inside its warmup: the learning rate would never reach
        --learning-rate, and the run would say nothing about it."""
        if self.max_iters < self.warmup_iters:
            raise EdgeLlamaError(f"--max-iters {self.max_iters} is below --warmup-iters {self.warmup_iters}: the "
                                 "learning rate would never finish warming up; lower --warmup-iters or raise "
                                 "--max-iters")
