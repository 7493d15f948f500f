"""unifairseq: parameter-efficient transfer learning for fairseq (He et al., ICLR 2022).

Install with scripts/install.sh (it pins torch and installs fairseq without its broken
torchaudio requirement); `pip install -e . --no-deps --no-build-isolation` then adds
this package. Cython extensions are listed in CYTHON_MODULES and built when present.
"""
import os

from setuptools import find_packages, setup

CYTHON_MODULES = [
    "unifairseq/metrics/rouge_fast.pyx",  # ROUGE for in-training validation
]


def extensions():
    if not CYTHON_MODULES:
        return []
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension

    # module name from the "/"-separated path (os.sep would leave the "/"s in place on Windows)
    exts = [Extension(os.path.splitext(p)[0].replace("/", "."), [p], include_dirs=[numpy.get_include()])
            for p in CYTHON_MODULES]
    return cythonize(exts, language_level=3)


setup(
    name="unifairseq",
    version="0.1.0",
    description="Adapters, prefix tuning, LoRA, BitFit, prompt tuning and the MAM adapter for fairseq",
    packages=find_packages(include=["unifairseq", "unifairseq.*"]),
    python_requires=">=3.10",
    # torch and fairseq are deliberately not listed: an unpinned torch pulls CUDA wheels and
    # fairseq's metadata asks for torchaudio, which would replace torch. See scripts/install.sh.
    install_requires=["numpy", "hydra-core==1.3.2", "omegaconf==2.3.0"],
    ext_modules=extensions(),
    entry_points={"console_scripts": [
        "unifairseq-export = unifairseq.tools.export:main",
        "unifairseq-count = unifairseq.tools.count:main",
        "unifairseq-import-hf = unifairseq.convert.hf_import:main",
        "unifairseq-hf-tokenize = unifairseq.convert.hf_tokenize:main",
    ]},
)
