"""Which CPU kernels the numerical libraries may pick: the knob behind cross-machine
reproducibility of CPU runs (benchmarks/kernel_paths.py measures it).

torch's own vectorised kernels (ATen), oneDNN's convolutions and MKL's matrix products each pick
an instruction set by CPU at run time; AVX-512 and AVX2 kernels accumulate in different orders,
so one fine-tune differs in its last bits from one machine to another, and a 1000-step LoRA
amplifies that into different weights. `PINNED` caps all three at AVX2 — every x86-64 CPU of the
last decade has it — so machines that differ only in AVX-512 run the same kernels. The workflow
sets it for every job unless ``runtime.cpu_kernels: native`` (a param of every job); for the
command line export it yourself. It must be set before torch is imported (each library reads it
once).
"""

PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2,STRICT"}
