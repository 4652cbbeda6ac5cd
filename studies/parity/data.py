"""Real data from packages the project's set-up installs (scripts/setup.sh); nothing is fetched.

Text: Debian's `fortunes` (fortune cookie files, /usr/share/games/fortunes) and `jargon-text`
(the Jargon File). Images: scikit-learn's bundled 8x8 handwritten digits.
"""

import gzip
from pathlib import Path
from typing import Dict, List, Tuple

import torch

SYSTEM_FORTUNES = Path("/usr/share/games/fortunes")
SYSTEM_JARGON = Path("/usr/share/doc/jargon-text/jargon.txt.gz")
# A machine that cannot install packages (the GPU machine) reads a copy of the installed files that
# scripts/prepare_device.sh puts here.
COPY_DIR = Path(__file__).resolve().parents[2] / ".deps" / "parity-text"
FORTUNES_DIR = SYSTEM_FORTUNES if SYSTEM_FORTUNES.is_dir() else COPY_DIR / "fortunes"
JARGON_FILE = SYSTEM_JARGON if SYSTEM_JARGON.is_file() else COPY_DIR / "jargon.txt.gz"
SETUP_HINT = ("install it with scripts/setup.sh (apt-get install fortunes jargon-text), or copy the installed "
              "files with scripts/prepare_device.sh")


def _fortune_files() -> List[Path]:
    # The cookie files have no suffix; *.dat are strfile indexes, *.u8 links to the same text.
    files = sorted(p for p in FORTUNES_DIR.glob("*") if p.is_file() and not p.is_symlink() and not p.suffix)
    if not files:
        raise FileNotFoundError(f"no fortune files in {FORTUNES_DIR}: {SETUP_HINT}")
    return files


def text_documents() -> Dict[str, bytes]:
    """Document name -> its raw bytes: each fortune file, and the Jargon File."""
    if not JARGON_FILE.exists():
        raise FileNotFoundError(f"{JARGON_FILE} is missing: {SETUP_HINT}")
    docs = {f"fortunes/{p.name}": p.read_bytes() for p in _fortune_files()}
    docs["jargon-text/jargon.txt"] = gzip.decompress(JARGON_FILE.read_bytes())
    return docs


def text_split(val_fraction: float = 0.1) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, int]]:
    """Byte tensors (uint8) for training and validation: the last val_fraction of every document is
    held out as one contiguous piece, so no validation text appears in training and both halves
    cover every document. Also returns each package's size in bytes."""
    train, val, sizes = [], [], {}
    for name, data in text_documents().items():
        cut = int(len(data) * (1.0 - val_fraction))
        train.append(data[:cut])
        val.append(data[cut:])
        package = name.split("/")[0]
        sizes[package] = sizes.get(package, 0) + len(data)

    def as_tensor(parts):
        return torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8)

    return as_tensor(train), as_tensor(val), sizes


def digits_split(seed: int = 0, val_fraction: float = 0.2):
    """scikit-learn's digits (1797 images, 8x8, 10 classes) as float tensors in [0, 1], stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x_tr, x_va, y_tr, y_va = train_test_split(d.images / 16.0, d.target, test_size=val_fraction,
                                              random_state=seed, stratify=d.target)
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    g = lambda a: torch.tensor(a, dtype=torch.int64)  # noqa: E731
    return f(x_tr), g(y_tr), f(x_va), g(y_va)
