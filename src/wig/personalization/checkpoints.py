"""The names under which a fine-tune's checkpoints are attached to a pipeline.

Guidance methods name the weights of each branch by these, and loading attaches the checkpoints
under them. They live apart from ``wig.guidance`` so that loading and training code need not
import the guidance methods: a change to how guidance combines branches must not look like a
change to training (the rules' code hashes follow imports, ``wig.workflow.provenance``).
"""

FULL = "full"  # adapter name of the fine-tuned LoRA (θ' = θ + ΔW)
WEAK = "weak"  # adapter name of the weak (early) LoRA checkpoint used by AG
