"""midtrain as one distribution package: `midtrain.kernels` is the top-level folder kernels/.

Our kernels are imported as `midtrain.kernels.<module>`, never as a bare `kernels`: Hugging Face's `kernels`
package (which transformers >= 5 imports whenever it is installed) owns that top-level name. An install puts the
folder at midtrain/kernels (pyproject.toml `package-dir`); in a checkout the folders sit beside this package, so its
search path also lists the checkout root and `midtrain.kernels` is the checkout's kernels/ folder. kernels/ has no
`__init__.py` on purpose: a bare `import kernels` from the project root then finds Hugging Face's package (a
regular package wins over a folder without `__init__.py`), not ours.
"""
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]
if (_CHECKOUT / "kernels" / "attention.py").is_file() and str(_CHECKOUT) not in __path__:
    __path__.append(str(_CHECKOUT))
