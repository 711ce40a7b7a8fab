"""maskdpo: Mask-DPO fine-grained factuality alignment, with fused Triton kernels.

The kernels live in the top-level folder `kernels/` but install as `maskdpo.kernels`: a top-level
`kernels` package would shadow Hugging Face's `kernels` distribution, which transformers probes for.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
# The version is written once, in maskdpo/__init__.py; read it without importing the package.
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "maskdpo" / "__init__.py").read_text(), re.M).group(1)

packages = find_packages(include=["maskdpo", "maskdpo.*"])
kernel_packages = ["maskdpo.kernels"] + [
    "maskdpo.kernels." + p for p in find_packages(where="kernels")
]

setup(
    name="maskdpo",
    version=VERSION,
    description="Mask-DPO: sentence-masked DPO for factuality alignment, with fused Triton kernels",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages + kernel_packages,
    package_dir={"maskdpo.kernels": "kernels"},
    # The example data, the bundled tokenizer, the annotation templates and the model configs ship in the wheel.
    package_data={"maskdpo.assets": ["data/*.jsonl", "tokenizer/*", "templates/*.txt", "models/*.json"]},
    install_requires=[
        # Install with the CPU wheel pinned in the same command (see README): an unpinned torch
        # alone pulls the CUDA build.
        "torch>=2.4",
        "triton>=3.0",
        "numpy",
        "tokenizers>=0.20",
        # 5.x: the bundled tokenizer is saved as 5.x's TokenizersBackend, which 4.x cannot load.
        "transformers>=5.0",
        "jinja2",
        "tqdm",
        "safetensors>=0.4",
        "deepspeed>=0.16",
        "pyyaml",
        "matplotlib",
        "openai>=1.40",
    ],
    extras_require={
        "test": ["pytest>=8", "hypothesis>=6", "pytest-timeout", "pytest-xdist>=3.5", "coverage>=7.10", "ruff>=0.14"],
        "flash": ["flash-attn>=2.6"],
        "bench": ["liger-kernel>=0.5", "cut-cross-entropy>=25.1"],
        "tensorboard": ["tensorboard"],
    },
    entry_points={"console_scripts": ["maskdpo=maskdpo.cli:entry"]},
)
