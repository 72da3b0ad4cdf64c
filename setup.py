"""zoomshot_jax: give any pretrained vision encoder CLIP's zero-shot abilities."""

import setuptools

setuptools.setup(
    name="zoomshot_jax",
    version="0.1.0",
    description=(
        "JAX/Flax implementations of Zoom-shot, Text-to-Concept, ASIF, zero-shot "
        "feature distillation and CLIP-TD, with sharded zero-shot evaluation."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # configs/ ships inside the package as zoomshot_jax.configs, so that
    # `python -m zoomshot_jax.demo` finds its config once installed.
    packages=setuptools.find_packages(include=["zoomshot_jax", "zoomshot_jax.*"])
    + ["zoomshot_jax.configs"],
    package_dir={"zoomshot_jax.configs": "configs"},
    package_data={"zoomshot_jax.evaluation": ["classnames/*.json"],
                  # The demo's shipped models (launch/train_demo_models.py).
                  "zoomshot_jax.demo": ["shipped/manifest.json", "shipped/*/*"]},
    install_requires=[
        # Tested with jax 0.10.2 / flax 0.12.8. The upper bounds guard the HF Flax
        # model code, which is frozen in transformers 4.x and not maintained.
        "jax>=0.6,<0.11",
        "flax>=0.10,<0.13",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        # transformers 5 removed the Flax CLIP/ViT/DINOv2/BEiT/ResNet/RegNet classes.
        "transformers>=4.40,<5",
        "tensorflow-cpu>=2.16",
        "tensorflow-datasets>=4.9.6",
        "tensorboard>=2.16",
        "clu>=0.0.12",
        "ml_collections>=1.0",
        "absl-py>=2.0",
        "numpy>=1.26",
        # jax's and TensorFlow's dtypes. 0.7.0 (2026-11) takes 1.35 s to import
        # its extension against 0.02 s for 0.6.0 (measured on the CI machine),
        # paid by every process: every binary, every test worker and child.
        "ml_dtypes>=0.5,<0.7",
        "scipy>=1.11",  # ASIF's sparse scoring on CPU (CSR x CSR); jax needs it too
        # ASIF's dots on CPU: the BLAS on one thread per call while the host's
        # pool runs them side by side (host_dots.py).
        "threadpoolctl>=3.1",
        "pillow>=10.0",
        "matplotlib>=3.7",  # the demo's bar chart
        "allpairspy>=2.5",  # pairwise covering arrays for synthetic prompts (the reference's)
    ],
    extras_require={
        # pytest-xdist: the suite runs on both cores (README's test command).
        "test": ["pytest>=8.0", "pytest-xdist>=3.5"],
        # The PyTorch baselines of the benchmarks in launch/ (CPU build).
        "bench": ["torch==2.13.0"],
    },
)
