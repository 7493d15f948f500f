"""The Cython extension only; everything else is in pyproject.toml.

    bash scripts/install.sh                                    a checkout: .venv, editable install
    pip wheel . --no-deps --no-build-isolation -w dist/        a wheel (Cython and numpy installed)

The .pyx files are compiled into the package; they are not shipped or needed at run time.
"""
import os

from setuptools import setup

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


setup(ext_modules=extensions())
