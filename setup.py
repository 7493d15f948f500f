"""unifairseq: parameter-efficient transfer learning for fairseq (He et al., ICLR 2022).

Install with scripts/install.sh (it pins torch and installs fairseq without its broken
torchaudio requirement); `pip install -e . --no-deps --no-build-isolation` then adds
this package. Cython extensions are listed in CYTHON_MODULES and built when present.
"""
import os

from setuptools import find_packages, setup

CYTHON_MODULES = []  # e.g. "unifairseq/data/rouge_fast.pyx" (built when listed)


def extensions():
    if not CYTHON_MODULES:
        return []
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension

    exts = [Extension(p[:-4].replace(os.sep, "."), [p], include_dirs=[numpy.get_include()])
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
)
