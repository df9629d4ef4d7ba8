"""The base model (loaded once per call) and the LoRA adapter (fresh for every point)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from blackbox.core.errors import SetupError
from blackbox.core.experiment import LoraVariantConfig, ModelConfig, TrainingConfig, lora_targets
from blackbox.core.logs import adopt_library_loggers
from blackbox.core.space import HyperParams
from blackbox.training.precision import Precision

logger = logging.getLogger(__name__)

PLAIN_LORA = LoraVariantConfig()


def resolve_device(setting: str, *, local_rank: int = 0) -> torch.device:
    """``auto`` is the (rank's) CUDA device when there is one, else the CPU.

    Raises:
        SetupError: a CUDA device is asked for and there is none.
    """
    if setting == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError as e:
        raise SetupError(f"training.device={setting!r} is not a device: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SetupError(f"training.device={setting!r} but CUDA is not available on this machine")
    return device


def model_location(config: ModelConfig) -> str:
    """A hub id or a local folder, as ``from_pretrained`` takes it (embedded models: their folder)."""
    from blackbox.training import embedded

    if embedded.is_embedded(config.name_or_path):
        return embedded.resolve_model(config.name_or_path)
    return config.name_or_path


def load_tokenizer(config: ModelConfig) -> Any:
    """The tokenizer of the model (hub id or local folder).

    Raises:
        SetupError: it cannot be loaded.
    """
    from transformers import AutoTokenizer  # local: slow to import

    adopt_library_loggers()  # transformers' warnings: to the evaluation's log, not the terminal (core.logs)
    try:
        return AutoTokenizer.from_pretrained(model_location(config), revision=config.revision or None)
    except (OSError, ValueError) as e:
        raise SetupError(f"cannot load the tokenizer of {config.name_or_path!r}: {e}") from e


def load_base_model(
    config: ModelConfig,
    training: TrainingConfig,
    device: torch.device,
    precision: Precision,
    *,
    for_training: bool = True,
) -> Any:
    """The frozen base model on ``device``, through the real ``from_pretrained`` path; with the fused kernels of
    ``training.fused_kernels`` (``auto``: see :func:`choose_fused_kernels`; ``for_training`` false: a model for
    inference, which ``auto`` leaves unfused).

    Raises:
        SetupError: the model cannot be loaded.
    """
    from transformers import AutoModelForCausalLM  # local: slow to import

    kwargs: dict[str, Any] = {
        "revision": config.revision or None,
        "dtype": precision.weights,
        "attn_implementation": resolve_attention(config, training, device, precision, for_training=for_training),
    }
    if config.quantization != "none":
        kwargs["quantization_config"] = _quantization_config(config, precision)
    if device.type == "cuda" or config.quantization != "none":
        # Straight onto the device: no host copy of the weights.
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(model_location(config), **kwargs)
    except (OSError, ValueError) as e:
        raise SetupError(f"cannot load model {config.name_or_path!r}: {e}") from e
    if "device_map" not in kwargs:
        model.to(device)  # type: ignore[arg-type]  # transformers' decorator hides the signature
    model.requires_grad_(False)
    model.config.use_cache = False  # no KV cache while training
    kernels, reason = choose_fused_kernels(
        training.fused_kernels, model, device, quantized=config.quantization != "none", for_training=for_training
    )
    if training.fused_kernels == "auto":
        logger.info("fused kernels: %s (training.fused_kernels = 'auto': %s)", kernels, reason)
    apply_fused_kernels(model, kernels, device)
    if for_training and device.type == "cpu" and config.quantization in ("nf4", "fp4"):
        keep_4bit_layers_trainable(model)
    # A quantised model trains as any other (issue 30): peft's prepare_model_for_kbit_training is not called. It
    # casts every parameter that is not 4-bit (norms, embeddings, LM head) to fp32, which made every activation fp32:
    # twice the activation memory, and no flash attention (fp16/bf16 only: QLoRA failed on every GPU). What it is
    # for is kept: the norms of transformers' models compute in fp32 whatever their weights' dtype (Llama's RMSNorm
    # upcasts its input; torch's layer_norm accumulates in fp32), and a frozen bf16 weight gains no digit from
    # being stored in fp32; checkpointing is the one below, non-reentrant, which needs no input gradients.
    if training.gradient_checkpointing:
        enable_checkpointing(model)
    return model


def keep_4bit_layers_trainable(model: Any) -> None:
    """Keep bitsandbytes' 4-bit layers in the layout that trains. On a CPU with AVX512-BF16, a ``Linear4bit``'s
    first forward in eval mode without gradients (a validation, a learning curve's checkpoint) repacks its weight
    for a fast CPU kernel, for good; that kernel (``gemv_4bit``) has no backward, so every later training step of
    the call passed no gradient through the base layers and the adapters stopped learning (bitsandbytes 0.50:
    the first point of an ``eval`` call trained, the next ones did not, nor did a training after its first
    checkpoint). Without the repacking the 4-bit weights are dequantised for each matmul, in eval mode too."""
    from bitsandbytes.nn.modules import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def enable_checkpointing(model: Any) -> None:
    """Activation checkpointing of the decoder layers (non-reentrant: LoRA's frozen inputs need it), through
    transformers' current name for it where it has one (``gradient_checkpointing_enable`` warns that it goes)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # transformers before the rename
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def resolve_attention(
    config: ModelConfig,
    training: TrainingConfig,
    device: torch.device,
    precision: Precision,
    *,
    for_training: bool = True,
) -> str:
    """The attention implementation: ``auto`` picks variable-length flash attention for packed batches on CUDA
    when this torch has it and the model computes in fp16 or bf16 (the kernel's only dtypes), else SDPA. A model
    for inference (padded batches) gets SDPA for either.

    Raises:
        SetupError: ``varlen`` without packing, or with fp32 compute.
    """
    from blackbox.training import attention

    choice: str = config.attn_implementation
    if not for_training and choice in ("auto", attention.NAME):
        return "sdpa"
    compute = precision.autocast or precision.weights
    if choice == "auto":
        fast = device.type == "cuda" and training.packing and attention.varlen_available()
        choice = attention.NAME if fast and compute in attention.FLASH_DTYPES else "sdpa"
    if choice == attention.NAME:
        if not training.packing:
            raise SetupError("attn_implementation 'varlen' needs training.packing = true")
        if compute not in attention.FLASH_DTYPES:
            raise SetupError(
                f"attn_implementation 'varlen' (flash attention) computes in bfloat16 or float16 only, but this "
                f"evaluation computes in {str(compute).removeprefix('torch.')}: set model.dtype = 'bfloat16' (or "
                "training.autocast = 'bfloat16'), or use 'sdpa'"
            )
        attention.register()
    return choice


def choose_fused_kernels(
    setting: str, model: Any, device: torch.device, *, quantized: bool, for_training: bool = True
) -> tuple[str, str]:
    """The fused kernels a model gets (``liger`` or ``none``) and why, for the setting ``training.fused_kernels``.

    ``auto`` is ``liger`` where it was measured to pay (1.29x the tokens/s of LoRA training on Llama-2-7B on an
    H200, benchmarks/RESULTS.md) and applies: training on CUDA, a Llama-family model with bf16 weights (not
    quantised), liger-kernel importable; else ``none`` (so the paper's fp32 weights stay unfused). ``liger`` and
    ``none`` are what they say (``liger`` fails where it cannot apply).
    """
    if setting != "auto":
        return setting, "as set"
    if not for_training:
        return "none", "a model for inference (measured for training only)"
    if device.type != "cuda":
        return "none", f"liger's Triton kernels need CUDA, this is {device.type}"
    if model.config.model_type != "llama":
        return "none", f"liger is applied to Llama-family models only, not {model.config.model_type!r}"
    if quantized:
        return "none", "a quantised model (liger was measured on bf16 weights only)"
    if getattr(model, "dtype", None) != torch.bfloat16:
        weights = str(getattr(model, "dtype", None)).removeprefix("torch.")
        return "none", f"{weights} weights (liger was measured on bf16 weights only)"
    try:
        import liger_kernel.transformers  # noqa: F401  # importable: its Triton kernels can be built
    except ImportError as e:
        return "none", f"liger-kernel does not import ({e}): pip install 'lora-blackbox[kernels]'"
    return "liger", "training a Llama-family model on CUDA"


def apply_fused_kernels(model: Any, kernels: str, device: torch.device) -> None:
    """Swap RMSNorm, SwiGLU and RoPE of a Llama-family model for liger-kernel's fused Triton kernels.

    liger-kernel patches transformers' Llama module for the whole process (RoPE) besides this model's
    layers; the loss stays ours (logits at target positions only).

    Raises:
        SetupError: not on CUDA, not a Llama-family model, or liger-kernel is not installed.
    """
    if kernels == "none":
        return
    if device.type != "cuda":
        raise SetupError("training.fused_kernels = 'liger' needs CUDA (Triton kernels)")
    if model.config.model_type != "llama":
        raise SetupError(
            f"training.fused_kernels = 'liger' supports Llama-family models, not {model.config.model_type!r}"
        )
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama
    except ImportError as e:
        raise SetupError(
            "training.fused_kernels = 'liger' needs liger-kernel: pip install 'lora-blackbox[kernels]'"
        ) from e
    apply_liger_kernel_to_llama(fused_linear_cross_entropy=False, cross_entropy=False, model=model)


def _quantization_config(config: ModelConfig, precision: Precision) -> Any:
    try:
        from transformers import BitsAndBytesConfig
    except ImportError as e:
        raise SetupError("quantised loading needs bitsandbytes: pip install 'lora-blackbox[gpu]'") from e
    if config.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = precision.autocast or precision.weights
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.quantization,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_use_double_quant=True,
    )


def attach_lora(
    base_model: Any, hparams: HyperParams, config: ModelConfig, lora: LoraVariantConfig = PLAIN_LORA
) -> Any:
    """Wrap the base model with a fresh LoRA adapter of the experiment's variant (peft's ``LoraConfig``): DoRA,
    rsLoRA, its initialisation (peft's default: random A, zero B), trained biases, the target modules.

    Seed the RNG before calling: the initialisation draws from it. When ``lora.changes_base_model`` (PiSSA, OLoRA,
    trained biases), the base model is changed by the adapter: load it again before attaching another.
    """
    from peft import LoraConfig, get_peft_model

    init = lora.init_lora_weights
    targets = lora_targets(config.target_modules)
    if targets == "all-linear":
        # Named here rather than by peft, which refuses "all-linear" together with layers_to_transform.
        targets = _linear_layer_names(base_model)
    peft_config = LoraConfig(
        r=hparams.lora_r,
        lora_alpha=hparams.lora_alpha,  # type: ignore[arg-type]  # annotated int; any number works
        lora_dropout=hparams.lora_dropout,
        target_modules=targets,
        layers_to_transform=list(config.layers_to_transform) or None,
        bias=lora.bias,
        use_dora=lora.use_dora,
        use_rslora=lora.use_rslora,
        # LoftQ replaces the default initialisation once the quantised layers are wrapped (below).
        init_lora_weights=True if init in ("default", "loftq") else init,  # type: ignore[arg-type]
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(base_model, peft_config)
        if init == "loftq":
            _init_loftq(model, config)
        return model
    except ValueError as e:
        _strip_lora(base_model)
        # peft names the modules it could not find: a configuration error of the whole experiment.
        raise SetupError(f"cannot attach LoRA to {config.target_modules}: {e}") from e
    except BaseException:
        # E.g. out of memory for a huge rank, after some layers were already wrapped: put them back,
        # so that the next point starts from the plain base model.
        _strip_lora(base_model)
        raise


def _linear_layer_names(model: Any) -> list[str]:
    """The names of the model's linear layers but the output layer (peft's "all-linear"), e.g. q_proj ... down_proj."""
    output = model.get_output_embeddings()
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not output  # bitsandbytes' layers are Linear too
    }
    return sorted(names)


def _init_loftq(model: Any, config: ModelConfig) -> None:
    """LoftQ on a 4-bit model: each adapter initialised so that it offsets the quantisation error of its layer,
    from the full-precision weights in the model's safetensors files (a local folder, or the hub's cache)."""
    from peft.utils.loftq_utils import replace_lora_weights_loftq

    if not torch.cuda.is_available():
        # peft 0.21 computes LoftQ's decomposition on CUDA (or XPU), whatever the model's device.
        raise SetupError("lora.init_lora_weights = 'loftq' needs CUDA: peft computes LoftQ there")
    location = model_location(config)
    replace_lora_weights_loftq(model, model_path=location if Path(location).is_dir() else None)


def save_initial_adapter(model: Any, lora: LoraVariantConfig, folder: Path) -> Path | None:
    """Save a PiSSA or OLoRA adapter before training (None for other variants): such an adapter applies to the
    residual weights left in the base model, and :func:`save_adapter` needs its initial state to convert it."""
    if not lora.init_lora_weights.startswith(("pissa", "olora")):
        return None
    model.save_pretrained(folder)
    return folder


def save_adapter(model: Any, folder: Path, *, initial: Path | None = None) -> None:
    """Save the trained adapter. With ``initial`` (PiSSA, OLoRA), peft converts it into a plain LoRA adapter of
    twice the rank that applies to the original base model, as every saved adapter of a study does."""
    model.save_pretrained(folder, path_initial_model_for_weight_conversion=str(initial) if initial else None)
    if initial is not None:
        shutil.rmtree(initial)


def detach_lora(peft_model: Any) -> Any:
    """The base model again, with every LoRA layer removed (nothing merged)."""
    return peft_model.unload()


def _strip_lora(model: Any) -> None:
    """Replace every LoRA-wrapped layer by the layer it wraps."""
    from peft.tuners.lora import LoraLayer

    wrapped = [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    for name, module in wrapped:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
