"""The names under which a fine-tune's checkpoints are attached to a pipeline.

Guidance methods name the weights of each branch by these, and loading attaches the checkpoints
under them. They live apart from ``wig.guidance`` so that loading and training code need not
import the guidance methods: a change to how guidance combines branches must not look like a
change to training (the rules' code hashes follow imports, ``wig.workflow.provenance``).
"""

FULL = "full"  # the fine-tuned checkpoint θ' (for a LoRA: its adapter name, θ' = θ + ΔW)
WEAK = "weak"  # the weak (early) checkpoint, AG's weak model
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # a diffusers LoRA folder's file
CUSTOM_DIFFUSION_WEIGHT_NAME = "pytorch_custom_diffusion_weights.safetensors"  # diffusers' Custom Diffusion file
